"""The brain MRI efficient-attention bundle at tiny sizes: trains, evaluates (multi-class report) and infers through
``python -m monai.bundle run``; every attention of the benchmark and the ResNet-50 overlay train one step with the
override in effect (MONAI's bundle ``run`` in-process, the code path of ``python -m monai.bundle run``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_utils import BUNDLES, run_bundle

from monai_ext.data.dataset import prepare_checked
from monai_ext.data.synthetic import radimagenet_brain as synth

BRAIN = BUNDLES / "brain_mri_efficient_attention_classification"
SIZE = {"image_size": 28}  # 28 / 7 = 4 x 4 tokens in the first stage
ATTENTIONS = ["linformer", "performer", "fastformer", "xca", "window"]


@pytest.fixture(scope="module")
def brain_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brain")
    synth.synthesize(root / "raw", cases=30, seed=0, size=32, balanced=True, min_per_class=3)
    prepare_checked("radimagenet_brain", root / "raw", root / "prepared", resolutions=[28])
    return root / "prepared"


def _io(tmp: Path, data: Path) -> dict:
    return dict(dataset_dir=str(data), ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "eval"),
                log_dir=str(tmp / "logs"), num_workers=0, batch_size=4, **SIZE)


def _predictions(path: Path) -> dict[str, list[float]]:
    rows = [r.split(",") for r in path.read_text().strip().splitlines()]
    return {Path(r[0]).name: [float(v) for v in r[1:]] for r in rows}


def test_train_evaluate_multiclass_report_infer(brain_data, tmp_path):
    io = _io(tmp_path, brain_data)
    run_bundle(BRAIN, ["train.yaml"], "training", epochs=1, **io)
    assert (tmp_path / "models" / "model.pt").is_file()
    run_bundle(BRAIN, ["train.yaml", "evaluate.yaml"], **io)
    ev = tmp_path / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    test = json.loads((brain_data / "datalist_28.json").read_text())["test"]
    assert metrics["task"] == "multiclass" and metrics["n_cases"] == len(test) and metrics["chance"] == 0.1
    assert [r["support"] for r in metrics["per_class"]] == [sum(e["label"] == c for e in test) for c in range(10)]
    assert metrics["per_class"][8]["name"] == "pituitary_lesion"
    assert sum(map(sum, metrics["confusion_matrix"])) == len(test)
    for key in ("top1", "top5", "balanced_accuracy", "macro_auroc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["top5"] >= metrics["top1"]
    report = (ev / "report.md").read_text()
    assert "balanced accuracy (chance 0.100)" in report and "## Per class" in report and "saliency.png" in report
    assert (ev / "saliency.png").stat().st_size > 1000
    prov = json.loads((ev / "provenance.json").read_text())
    assert prov["run"]["variant"]["attention"] == "softmax"
    cases = (ev / "per_case.csv").read_text().splitlines()
    assert cases[0].startswith("case_id,label,predicted,probability_acute_infarct") and len(cases) == len(test) + 1

    run_bundle(BRAIN, ["inference.yaml"], dataset_dir=str(brain_data), ckpt_dir=str(tmp_path / "models"),
               output_dir=str(tmp_path / "infer"), **SIZE)
    inferred = _predictions(tmp_path / "infer" / "predictions.csv")
    evaluated = _predictions(ev / "predictions.csv")
    assert inferred.keys() == evaluated.keys() and len(inferred) == len(test)
    for name, p in inferred.items():
        assert len(p) == 10 and p == pytest.approx(evaluated[name], abs=1e-5), name


def _one_step(tmp: Path, data: Path, files: list[str], **overrides):
    """One training iteration (and the validation after it) through MONAI's ``ConfigWorkflow`` (what
    ``python -m monai.bundle run training`` runs, in-process); returns the trained network."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=[str(BRAIN / "configs" / f) for f in files], run_id="training",
                              workflow_type="train", epochs=1, **{"train#trainer#epoch_length": 1},
                              **_io(tmp, data), **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 1
    return workflow.parser.get_parsed_content("network_def")


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_attention_as_an_override_trains(brain_data, tmp_path, attention):
    from monai_ext.networks.attention import ATTENTION_REGISTRY

    net = _one_step(tmp_path, brain_data, ["train.yaml"], **{"network_def#attention": attention})
    blocks = [blk for stage in net.stages for blk in stage]
    assert net.attention == attention
    assert all(type(blk.attn) is ATTENTION_REGISTRY[attention] for blk in blocks), [type(b.attn) for b in blocks]
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert saved.keys() == net.state_dict().keys()


def test_resnet50_overlay_trains(brain_data, tmp_path):
    from monai.networks.nets import ResNet

    net = _one_step(tmp_path, brain_data, ["train.yaml", "resnet50.yaml"])
    assert isinstance(net, ResNet) and net.fc.out_features == 10


def test_paper_table_variants_cover_every_attention_and_resnet50(tmp_path):
    from monai_ext.networks.attention import ATTENTION_REGISTRY
    from monai_ext.protocols.paper_table import variant_spec
    from monai_ext.protocols.variants import bundle_variants

    spec = bundle_variants(BRAIN)
    assert spec["default"] == ["softmax", *ATTENTIONS, "softmax_free", "sima", "resnet50"]
    assert set(spec["default"]) - {"resnet50"} <= set(ATTENTION_REGISTRY)
    assert variant_spec(spec["variants"]["resnet50"], tmp_path) == (["configs/resnet50.yaml"], {})
    assert variant_spec(spec["variants"]["fastformer"], tmp_path) == ([], {"network_def#attention": "fastformer"})
    for overlay in spec["overlays"].values():
        assert all((BRAIN / f).is_file() for f in overlay["files"])


def test_paper_overlay_builds_the_benchmark_network():
    """configs/paper.yaml: the ~28M-parameter pyramid at 224 px (28.27M with a 1000-class head; 10 classes here)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BRAIN / "configs" / f) for f in ("train.yaml", "paper.yaml")])
    net = parser.get_parsed_content("network_def", instantiate=True)
    n = sum(p.numel() for p in net.parameters())
    assert net.img_size == (224, 224) and net.stage_grids[0] == [32, 32]
    assert 27.0e6 < n < 28.3e6, n
    assert parser.get_parsed_content("epochs") == 100 and parser.get_parsed_content("imbalance") == "none"
