"""``monai-ext paper-table``: every variant trained and evaluated through ``python -m monai.bundle run`` into its
own folder with the same seed and data, one Table-2-style comparison with the training cost; variants as data."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from bundle_utils import BUNDLES
from monai.bundle import ConfigParser

from monai_ext.cli import main
from monai_ext.data import vindr_cxr
from monai_ext.data.synthetic import vindr_cxr as synth_vindr
from monai_ext.protocols import VARIANTS, bundle_variants
from monai_ext.protocols.paper_table import run_measured, run_paper_table

VINDR = BUNDLES / "vindr_cxr_cardiomegaly_classification"


def test_peak_rss_of_the_child_is_measured(tmp_path) -> None:
    """A child that holds 300 MiB reports at least that; a bare interpreter far less (not the parent's size)."""
    hold = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    big = run_measured([sys.executable, "-c", hold], cwd=tmp_path)  # sampled every 0.2 s: hold it a while
    small = run_measured([sys.executable, "-c", "import time; time.sleep(1)"], cwd=tmp_path)
    assert big["peak_rss_mib"] >= 300 > small["peak_rss_mib"] and big["seconds"] > 0


def test_apf_uniform_variant_is_the_full_grid() -> None:
    """PAIP's ``uniform`` variant: UNETR at APF's smallest patch, L = (image / patch)^2 tokens."""
    for name in ("apf_unetr_paip_segmentation", "apf_unetr_btcv_segmentation"):
        spec = bundle_variants(BUNDLES / name)
        assert spec["default"] == ["apf", "uniform"] and spec["variants"]["apf"] == {}
        p = ConfigParser()
        p.read_config(str(BUNDLES / name / "configs" / "train.yaml"))
        p.update({"bundle_root": str(BUNDLES / name), **spec["variants"]["uniform"]})
        side, patch = p.get_parsed_content("image_size"), p.get_parsed_content("apf#patch_size")
        side = side[0] if isinstance(side, list) else side
        assert p.get_parsed_content("apf#mode") == "uniform"
        assert p.get_parsed_content("apf#num_tokens") == (side // patch) ** 2


def test_a_bundle_defines_its_own_variants(tmp_path) -> None:
    (tmp_path / "configs").mkdir()
    own = {"variants": {"a": {"x": 1}}, "default": ["a"], "overlays": {"cpu": {"files": [], "overrides": {}}}}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"version": "0", "paper_table": own}))
    assert bundle_variants(tmp_path) == own
    with pytest.raises(ValueError, match="no variants known"):
        bundle_variants(tmp_path / "nothing")
    assert set(VARIANTS) == {p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.yaml").is_file()}


@pytest.fixture(scope="module")
def vindr_32(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vindr_table")
    synth_vindr.synthesize(root / "raw", cases=40, seed=0)
    vindr_cxr.prepare(root / "raw", root / "prepared", resolutions=[32])
    return root / "prepared"


def test_paper_table_two_variants(vindr_32, tmp_path) -> None:
    out = tmp_path / "table"
    overrides = {"dataset_dir": str(vindr_32), "image_size": 32, "patch_size": 8, "batch_size": 4}
    with pytest.raises(ValueError, match="unknown variant"):
        run_paper_table(VINDR, variants=["softmax", "nope"], out=out, overrides=overrides)
    assert main(["paper-table", str(VINDR), "--variants", "softmax", "softmax_free", "--epochs", "1",
                 "--out", str(out), "--overrides", json.dumps(overrides)]) == 0
    text = (out / "paper_table.md").read_text()
    auroc = {}
    for v in ("softmax", "softmax_free"):  # each variant in its own folder, nothing shared
        assert (out / v / "models" / "model.pt").is_file()
        metrics = json.loads((out / v / "eval" / "metrics.json").read_text())
        prov = json.loads((out / v / "eval" / "provenance.json").read_text())
        assert prov["run"]["variant"]["attention"] == v and prov["seeds"]["config"] == 0
        auroc[v] = metrics["auroc"]["value"]
        cost = json.loads((out / v / "eval" / "training_cost.json").read_text())
        assert cost["epochs"] == 1 and cost["peak_rss_mib"] > 100 and cost["seconds_per_epoch"] > 0
        assert re.search(rf"\| {v} \| 1 \| {cost['seconds_per_epoch']:.2f} \| {cost['peak_rss_mib']:.0f} \|", text)
    row = next(line for line in text.splitlines() if line.startswith("| vindr_cxr_cardiomegaly_classification (32"))
    assert f"{auroc['softmax']:.3f}" in row.split("|")[2] and f"{auroc['softmax_free']:.3f}" in row.split("|")[3]
    assert "ViT (softmax)" in text and "softmax-free (ours)" in text
    with pytest.raises(FileExistsError, match="not empty"):  # nothing is overwritten
        run_paper_table(VINDR, variants=["softmax"], out=out, overrides=overrides)
