"""The softmax-free bundles' paper protocol (Khader et al.): ``configs/paper.yaml`` builds Table 1's network with
Sec. 3.1's training settings, trains through ``python -m monai.bundle run`` at tiny sizes, refuses data prepared
otherwise, ``finetune_from_softmax.yaml`` (Sec. 3.4) reports its transfer, and DUKE's ``NC`` rule keeps
2 x (922 - 271) = 1302 breasts (Sec. 2.2) on a table in the real clinical layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bundle_utils import BUNDLES, run_bundle
from monai.bundle import ConfigParser

from monai_ext.data import duke, vindr_cxr
from monai_ext.data.synthetic import duke as synth_duke
from monai_ext.data.synthetic import vindr_cxr as synth_vindr
from monai_ext.protocols import check_prepared
from monai_ext.protocols.finetune import init_from_checkpoint
from monai_ext.utils.checkpoint import CheckpointError
from monai_ext.workflows.checks import DatasetError

VINDR = BUNDLES / "vindr_cxr_cardiomegaly_classification"
DUKE = BUNDLES / "duke_breast_mri_classification"
#: Table 1 of the paper (ViT2D / ViT3D) and Sec. 3.1, written out here as the independent reference
PAPER_2D = {"in_channels": 3, "patch": (16, 16), "layers": 8, "heads": 8, "mlp": 1024, "batch": 32, "epochs": 100}
PAPER_3D = {"in_channels": 1, "patch": (16, 16, 4), "layers": 8, "heads": 8, "mlp": 1024, "batch": 16, "epochs": 100}
#: tiny network sizes for the runs (the paper's are checked by parsing only)
TINY = {"presets#paper#hidden_size": 32, "presets#paper#mlp_dim": 32, "presets#paper#num_layers": 1,
        "presets#paper#num_heads": 2, "presets#paper#dim_head": 16}


def _parser(bundle: Path, files: list[str], **overrides) -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(bundle / "configs" / f) for f in files])
    p.update({"bundle_root": str(bundle), **overrides})
    return p


def _check_network(net, ref: dict, img_size: tuple[int, ...]) -> None:
    conv = net.patch_embedding.patch_embeddings
    assert conv.in_channels == ref["in_channels"]
    assert tuple(conv.kernel_size) == ref["patch"] == tuple(conv.stride)
    assert len(net.blocks) == ref["layers"]
    assert {b.attn.num_heads for b in net.blocks} == {ref["heads"]}
    assert {b.mlp.linear1.out_features for b in net.blocks} == {ref["mlp"]}
    assert net.attention == "softmax_free" and type(net.blocks[0].attn).__name__ == "SoftmaxFreeAttention"
    assert net.num_patches == math.prod(i // p for i, p in zip(img_size, ref["patch"]))


def _random_transforms(p: ConfigParser) -> list:
    return p.get_parsed_content("train#random_transforms")


def test_vindr_paper_overlay_is_table_1() -> None:
    p = _parser(VINDR, ["train.yaml", "paper.yaml"])
    _check_network(p.get_parsed_content("network_def"), PAPER_2D, (224, 224))
    assert p.get_parsed_content("network_def").num_patches == 196  # Sec. 2.2: 196 patches at 224 px
    assert (p.get_parsed_content("batch_size"), p.get_parsed_content("epochs")) == (PAPER_2D["batch"], 100)
    # Sec. 3.1: rotation and vertical flip, p = 0.5 each; nothing else
    rot, flip = _random_transforms(p)
    assert type(rot).__name__ == "RandRotated" and rot.prob == 0.5
    assert type(flip).__name__ == "RandFlipd" and flip.prob == 0.5 and flip.flipper.spatial_axis == 1
    # the grey radiograph becomes 3 channels for Table 1's in_channels
    names = [type(t).__name__ for t in p.get_parsed_content("train#deterministic_transforms")]
    assert "RepeatChanneld" in names
    p1024 = _parser(VINDR, ["train.yaml", "paper.yaml", "paper_1024.yaml"])
    assert p1024.get_parsed_content("batch_size") == 4  # Sec. 3.1: batch 4 at 1024 px
    assert p1024.get_parsed_content("network_def#img_size") == [1024, 1024]  # 4096 patches at patch 16


def test_vindr_vertical_flip_flips_top_and_bottom(tmp_path) -> None:
    """The flip axis of paper.yaml on a real PNG read by the bundle's loader: the top row becomes the bottom."""
    import numpy as np
    from PIL import Image

    img = np.zeros((8, 8), np.uint8)
    img[0, :] = 255  # top row white
    Image.fromarray(img).save(tmp_path / "x.png")
    p = _parser(VINDR, ["train.yaml", "paper.yaml"])
    loaded = p.get_parsed_content("train#deterministic_transforms")[0]({"image": str(tmp_path / "x.png")})["image"]
    flip = _random_transforms(p)[1].flipper
    out = np.asarray(flip(loaded[None]))[0]
    # MONAI's PNG reader gives (x, y): y = 0 is the top row
    assert np.asarray(loaded)[:, 0].min() == 255 and out[:, -1].min() == 255 and out[:, 0].max() == 0


def test_duke_paper_overlay_is_table_1() -> None:
    p = _parser(DUKE, ["train.yaml", "paper.yaml"])
    _check_network(p.get_parsed_content("network_def"), PAPER_3D, (256, 256, 32))
    assert (p.get_parsed_content("batch_size"), p.get_parsed_content("epochs")) == (PAPER_3D["batch"], 100)
    flips = _random_transforms(p)
    assert [type(t).__name__ for t in flips] == ["RandFlipd"] * 3  # Sec. 3.1: flips on every axis, nothing else
    assert sorted(t.flipper.spatial_axis for t in flips) == [0, 1, 2] and {t.prob for t in flips} == {0.5}
    inf = _parser(DUKE, ["inference.yaml", "paper_inference.yaml"])
    assert (inf.get_parsed_content("image_size"), inf.get_parsed_content("preset")) == ([256, 256, 32], "paper")
    prep = p.get_parsed_content("paper_preparation")
    assert prep == {"spacing": [0.7, 0.7, 3.0], "size": [256, 256, 32], "out_size": [256, 256, 32],
                    "ap_crop": "center"}


def test_train_alone_stays_the_cpu_default() -> None:
    for bundle in (VINDR, DUKE):
        p = _parser(bundle, ["train.yaml"])
        assert p.get_parsed_content("preset") == "cpu" and p.get_parsed_content("network_def#in_channels") == 1


# ----------------------------------------------------------------------------------------------- tiny runs
@pytest.fixture(scope="module")
def vindr_32(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vindr_paper")
    synth_vindr.synthesize(root / "raw", cases=40, seed=0)
    vindr_cxr.prepare(root / "raw", root / "prepared", resolutions=[32])
    return root / "prepared"


def _io(tmp: Path, data: Path) -> dict:
    return {"dataset_dir": str(data), "ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "eval"),
            "log_dir": str(tmp / "logs"), "num_workers": 0, "batch_size": 4, "epochs": 1}


def test_vindr_paper_tiny_run_and_mismatch(vindr_32, tmp_path) -> None:
    io = _io(tmp_path, vindr_32)
    proc = run_bundle(VINDR, ["train.yaml", "paper.yaml"], "training", image_size=32, patch_size=8, **TINY, **io)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "prepared data match the overlay" in proc.stdout + proc.stderr
    # the 224 px datalist of the overlay was not prepared: refused, with the command that prepares it
    with pytest.raises(DatasetError, match=r"datalist_224.json: datalist not found.*--resolutions 224"):
        check_prepared(vindr_32, "datalist_224.json", image_size=224, prepare_hint="--resolutions 224")
    # a datalist whose images are not the overlay's size: refused before training, both sizes named
    bad = tmp_path / "bad"
    bad.mkdir()
    body = json.loads((vindr_32 / "datalist_32.json").read_text())
    for split in ("training", "validation", "test"):
        for e in body[split]:
            e["image"] = str(vindr_32 / e["image"])
    (bad / "datalist_48.json").write_text(json.dumps(body))
    proc = run_bundle(VINDR, ["train.yaml", "paper.yaml"], "training", check=False, image_size=48, patch_size=8,
                      **TINY, **{**io, "dataset_dir": str(bad), "ckpt_dir": str(tmp_path / "m3")})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "datalist_48.json: images are 32x32" in last and "expects 48x48" in last
    assert "monai-ext prepare vindr_cxr" in last and "--resolutions 48" in last
    assert not (tmp_path / "m3").exists()  # nothing trained


def test_vindr_finetune_from_softmax(vindr_32, tmp_path) -> None:
    io = _io(tmp_path, vindr_32)
    size = {"image_size": 32, "patch_size": 8}
    with pytest.raises(CheckpointError, match="none.pt: softmax checkpoint not found"):
        init_from_checkpoint(torch.nn.Linear(1, 1), tmp_path / "none.pt", tmp_path / "models")
    assert not (tmp_path / "models").exists()
    run_bundle(VINDR, ["train.yaml"], "training", **size, **{**io, "ckpt_dir": str(tmp_path / "softmax")},
               **{"network_def#attention": "softmax"})
    proc = run_bundle(VINDR, ["train.yaml", "finetune_from_softmax.yaml"], "training", **size,
                      **{**io, "ckpt": str(tmp_path / "softmax" / "model.pt")})
    report = json.loads((tmp_path / "models" / "transfer.json").read_text())
    layers = 4  # train.yaml's cpu preset
    # every weight of the softmax ViT is used; the softmax-free ViT's only new tensors are q/k/v's gamma/beta
    assert report["unused"] == [] and report["mismatched"] == []
    assert sorted({n.rsplit(".", 1)[-1] for n in report["new"]}) == [f"{t}_{g}" for t in "kqv" for g in ("beta",
                                                                                                       "gamma")]
    assert len(report["new"]) == layers * 6
    assert report["copied"] and report["summary"] in proc.stdout + proc.stderr
    assert (tmp_path / "models" / "model.pt").is_file()


# ------------------------------------------------------------------------------------------------------ DUKE
@pytest.fixture(scope="module")
def duke_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("duke_paper")
    synth_duke.synthesize(root / "raw", cases=8, seed=0)
    return root


def test_duke_paper_tiny_run_and_mismatch(duke_raw, tmp_path) -> None:
    size = {"image_size": [32, 32, 8], "presets#paper#patch_size": [8, 8, 4]}
    cpu = duke_raw / "prepared_cpu"  # the CPU default's anterior crop
    duke.prepare(duke_raw / "raw", cpu, out_size=[32, 32, 8])
    proc = run_bundle(DUKE, ["train.yaml", "paper.yaml"], "training", check=False, **size, **TINY,
                      **_io(tmp_path / "a", cpu))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and f"{cpu / 'datalist.json'}: data prepared with ap_crop='anterior'" in last
    assert "expects ap_crop='center'" in last and "--ap-crop center" in last
    assert not (tmp_path / "a" / "models").exists()
    paper = duke_raw / "prepared_center"
    duke.prepare(duke_raw / "raw", paper, out_size=[32, 32, 8], ap_crop="center")
    run_bundle(DUKE, ["train.yaml", "paper.yaml"], "training", **size, **TINY, **_io(tmp_path / "b", paper))
    assert (tmp_path / "b" / "models" / "model.pt").is_file()
    with pytest.raises(DatasetError, match=r"images are 32x32x8 .*expects 64x64x16"):
        check_prepared(paper, "datalist.json", image_size=[64, 64, 16])
    with pytest.raises(DatasetError, match=r"spacing=\[0.7, 0.7, 3.0\], the overlay expects spacing=\[1.0, 1.0, 3.0\]"):
        check_prepared(paper, "datalist.json", settings={"spacing": [1.0, 1.0, 3.0]})


def test_duke_nc_rule_keeps_1302_breasts_of_922(tmp_path) -> None:
    """Sec. 2.2: 922 patients, 271 with unknown laterality dropped -> 1302 breasts. On a table in the real layout
    (three header rows; ``NC`` in Tumor Location or Bilateral Information), the rule drops whole patients, so
    271 NC rows give exactly 1302 labelled breasts. (Whether the real table has 271 NC rows needs that table.)"""
    import pandas as pd

    rows = [["Patient Information", "Tumor Characteristics", "Tumor Characteristics"],
            ["Patient ID", "Tumor Location", "Bilateral Information"],
            ["", "{L, R}", "{0 = unilateral, 1 = bilateral, NC = not clear}"]]
    for i in range(1, 923):
        loc, bil = ("L" if i % 2 else "R"), "0"
        if i <= 271:
            loc, bil = (("NC", "0"), ("L", "NC"), ("NC", "NC"))[i % 3]
        elif i % 50 == 0:
            bil = "1"
        rows.append([f"Breast_MRI_{i:03d}", loc, bil])
    path = tmp_path / "Clinical_and_Other_Features.xlsx"
    pd.DataFrame(rows).to_excel(path, header=False, index=False)
    table = duke.read_clinical(path)
    assert len(table) == 922
    kept, dropped = {}, 0
    for pid, row in table.items():
        try:
            kept[pid] = duke.side_labels(row["location"], row["bilateral"])
        except duke.Excluded:
            dropped += 1
    assert dropped == 271 and sum(len(v) for v in kept.values()) == 1302


def test_vindr_paper_overlay_on_inference(tmp_path) -> None:
    """``['inference.yaml', 'paper_inference.yaml']``: a grey PNG becomes the paper network's 3 channels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "x.png")
    full = _parser(VINDR, ["inference.yaml", "paper_inference.yaml"])
    assert (full.get_parsed_content("image_size"), full.get_parsed_content("preset")) == (224, "paper")
    p = _parser(VINDR, ["inference.yaml", "paper_inference.yaml"], image_size=32, patch_size=8, **TINY)
    x = p.get_parsed_content("preprocessing")({"image": str(tmp_path / "x.png")})["image"]
    assert tuple(x.shape) == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    net = p.get_parsed_content("network_def")
    assert net.patch_embedding.patch_embeddings.in_channels == 3 and net(x[None]).shape[-1] == 2
