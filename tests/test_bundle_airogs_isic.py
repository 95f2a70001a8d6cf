"""The AIROGS and ISIC bundles end to end through ``python -m monai.bundle run`` at tiny sizes: AIROGS's Sec. 3.4
recipe (softmax, then softmax-free initialised from it) evaluated and inferred; ISIC with the weighted sampler,
evaluated (AUROC and AUPRC) and inferred."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_utils import BUNDLES, run_bundle

from monai_ext.data.dataset import prepare_checked
from monai_ext.data.synthetic import airogs as synth_airogs
from monai_ext.data.synthetic import isic as synth_isic
from monai_ext.protocols.paper_table import variant_spec
from monai_ext.protocols.variants import bundle_variants

AIROGS = BUNDLES / "airogs_glaucoma_classification"
ISIC = BUNDLES / "isic_melanoma_classification"
SIZE = {"image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def airogs_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("airogs")
    synth_airogs.synthesize(root / "raw", cases=20, seed=0, rg_fraction=0.5)
    prepare_checked("airogs", root / "raw", root / "prepared", resolutions=[32])
    return root / "prepared"


@pytest.fixture(scope="module")
def isic_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic")
    synth_isic.synthesize(root / "raw", cases=40, seed=0, malignant_fraction=0.3, images_per_patient=3)
    prepare_checked("isic", root / "raw", root / "prepared", resolutions=[32])
    return root / "prepared"


def _io(tmp: Path, data: Path, name: str = "models") -> dict:
    return dict(dataset_dir=str(data), ckpt_dir=str(tmp / name), output_dir=str(tmp / "eval"),
                log_dir=str(tmp / "logs"), num_workers=0, batch_size=4, **SIZE)


def _predictions(path: Path) -> dict[str, float]:
    rows = [r.split(",") for r in path.read_text().strip().splitlines()]
    return {Path(r[0]).name: float(r[2]) for r in rows}


def _softmax_checkpoint(path: Path) -> dict:
    """A softmax ViT of the bundle's network (what step 1 of Sec. 3.4, training with ``--network_def#attention
    softmax``, leaves in ``model.pt``: the state dict), built from train.yaml; saved to ``path``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(AIROGS / "configs" / "train.yaml"))
    parser.update({**SIZE, "network_def#attention": "softmax"})
    torch.manual_seed(1)
    state = parser.get_parsed_content("network_def").state_dict()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_airogs_finetune_from_softmax_evaluate_infer(airogs_data, tmp_path):
    softmax = _softmax_checkpoint(tmp_path / "softmax" / "model.pt")
    io = _io(tmp_path, airogs_data, "finetuned")
    proc = run_bundle(AIROGS, ["train.yaml", "finetune_from_softmax.yaml"], "training", epochs=1,
                      ckpt=str(tmp_path / "softmax" / "model.pt"), **io)
    assert "initialised from" in proc.stdout + proc.stderr
    transfer = json.loads((tmp_path / "finetuned" / "transfer.json").read_text())
    assert transfer["source"] == str((tmp_path / "softmax" / "model.pt").resolve())
    assert transfer["new"] and all("gamma" in k or "beta" in k for k in transfer["new"])
    assert "blocks.0.attn.qkv.weight" in transfer["copied"] or len(transfer["copied"]) > 10
    tuned = torch.load(tmp_path / "finetuned" / "model.pt", weights_only=True)
    assert "blocks.0.attn.q_gamma" in tuned and "blocks.0.attn.q_gamma" not in softmax
    assert not torch.equal(tuned["patch_embedding.patch_embeddings.weight"],
                           softmax["patch_embedding.patch_embeddings.weight"])  # trained after the transfer

    run_bundle(AIROGS, ["train.yaml", "finetune_from_softmax.yaml", "evaluate.yaml"], report_bootstrap=100, **io)
    run = json.loads((tmp_path / "eval" / "provenance.json").read_text())["run"]
    assert run["name"] == "airogs_glaucoma_classification (fine-tuned from softmax)"  # its own row in compare
    assert run["variant"]["attention"] == "softmax_free"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_cases"] == 4
    run_bundle(AIROGS, ["inference.yaml"], dataset_dir=str(airogs_data), ckpt_dir=str(tmp_path / "finetuned"),
               output_dir=str(tmp_path / "infer"), **SIZE)
    inferred = _predictions(tmp_path / "infer" / "predictions.csv")
    evaluated = _predictions(tmp_path / "eval" / "predictions.csv")
    assert inferred.keys() == evaluated.keys() and len(inferred) == 4
    for name, p in inferred.items():
        assert p == pytest.approx(evaluated[name], abs=1e-5), name


def test_isic_weighted_sampler_evaluate_infer(isic_data, tmp_path):
    io = _io(tmp_path, isic_data)
    proc = run_bundle(ISIC, ["train.yaml"], "training", epochs=1, imbalance="sampler", **io)
    assert "imbalance=sampler: class counts" in proc.stdout + proc.stderr
    run_bundle(ISIC, ["train.yaml", "evaluate.yaml"], imbalance="sampler", report_bootstrap=100, **io)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    test = json.loads((isic_data / "datalist_32.json").read_text())["test"]
    assert metrics["n_cases"] == len(test) and metrics["n_positive"] == sum(e["label"] for e in test)
    assert metrics["auprc"]["prevalence"] == pytest.approx(metrics["n_positive"] / metrics["n_cases"])
    assert "AUPRC (average precision" in (tmp_path / "eval" / "report.md").read_text()
    run_bundle(ISIC, ["inference.yaml"], dataset_dir=str(isic_data), ckpt_dir=str(tmp_path / "models"),
               output_dir=str(tmp_path / "infer"), **SIZE)
    inferred = _predictions(tmp_path / "infer" / "predictions.csv")
    evaluated = _predictions(tmp_path / "eval" / "predictions.csv")
    assert inferred.keys() == evaluated.keys()
    for name, p in inferred.items():
        assert p == pytest.approx(evaluated[name], abs=1e-5), name


def test_isic_loss_weights_by_default_and_ddp_refuses_the_sampler(isic_data, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ISIC / "configs" / "train.yaml")])
    parser.update({"dataset_dir": str(isic_data), **SIZE})
    weight = parser.get_parsed_content("loss").weight
    train = json.loads((isic_data / "datalist_32.json").read_text())["training"]
    n_pos = sum(e["label"] for e in train)
    n = len(train)
    torch.testing.assert_close(weight, torch.tensor([n / (2 * (n - n_pos)), n / (2 * n_pos)]))
    assert parser.get_parsed_content("train#sampler") is None
    ddp = ConfigParser()
    ddp.read_config([str(ISIC / "configs" / "train.yaml"), str(ISIC / "configs" / "multi_gpu_train.yaml")])
    assert "$monai_ext.workflows.imbalance.check_ddp(@imbalance)" in ddp.get("initialize")


def test_paper_table_finetune_variant_reads_the_softmax_checkpoint(tmp_path):
    spec = bundle_variants(AIROGS)  # monai_ext.protocols.VARIANTS
    assert spec["default"].index("softmax") < spec["default"].index("finetune_softmax_free")
    files, overrides = variant_spec(spec["variants"]["finetune_softmax_free"], tmp_path)
    assert files == ["configs/finetune_from_softmax.yaml"]
    assert overrides == {"ckpt": f"{tmp_path}/softmax/models/model.pt"}
    assert variant_spec({"network_def#attention": "sima"}, tmp_path) == ([], {"network_def#attention": "sima"})
    assert (AIROGS / files[0]).is_file()
