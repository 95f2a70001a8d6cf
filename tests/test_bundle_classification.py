"""The classification bundles end to end through ``python -m monai.bundle run`` (tiny sizes):
train, evaluate, inference, DDP with 2 CPU processes, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from bundle_utils import BUNDLES, ENV, bundle_cmd, run_bundle, torchrun_bundle
from resume_utils import assert_same_run_state, assert_same_state

from monai_ext.data import duke, vindr_cxr
from monai_ext.utils.checkpoint import load_checkpoint

VINDR = BUNDLES / "vindr_cxr_cardiomegaly_classification"
DUKE = BUNDLES / "duke_breast_mri_classification"


@pytest.fixture(scope="module")
def vindr_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vindr")
    vindr_cxr.synthesize(root / "raw", cases=40, seed=0)
    vindr_cxr.prepare(root / "raw", root / "prepared", resolutions=[64])
    test_labels = {e["label"] for e in json.loads((root / "prepared" / "datalist_64.json").read_text())["test"]}
    assert test_labels == {0, 1}, "the fixture needs both classes in the test split"
    return root / "prepared"


@pytest.fixture(scope="module")
def duke_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("duke")
    duke.synthesize(root / "raw", cases=8, seed=0)
    duke.prepare(root / "raw", root / "prepared", out_size=[32, 32, 8])
    return root / "prepared"


def _io(tmp: Path, data: Path) -> dict:
    return dict(dataset_dir=str(data), ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "eval"),
                log_dir=str(tmp / "logs"), num_workers=0, batch_size=4)


def _predictions(path: Path) -> dict[str, tuple[float, float]]:
    """ClassificationSaver's ``predictions.csv``: file name -> (P(negative), P(positive))."""
    rows = [r.split(",") for r in path.read_text().strip().splitlines()]
    out = {Path(r[0]).name: (float(r[1]), float(r[2])) for r in rows}
    assert len(out) == len(rows), "an image was predicted twice"
    return out


def _check_auroc_against_predictions(eval_dir: Path, data: Path, test: list[dict]) -> dict[str, tuple[float, float]]:
    """``metrics.csv``'s AUROC (MONAI's handler) = scikit-learn's on ``predictions.csv`` and the datalist labels."""
    from sklearn.metrics import roc_auc_score

    metrics = (eval_dir / "metrics.csv").read_text()
    assert metrics.startswith("test_auroc")
    preds = _predictions(eval_dir / "predictions.csv")
    labels = {Path(e["image"]).name: int(e["label"]) for e in test}
    assert preds.keys() == labels.keys()
    names = sorted(labels)
    want = roc_auc_score([labels[n] for n in names], [preds[n][1] for n in names])
    assert float(metrics.split(",")[1]) == pytest.approx(want, abs=1e-6)
    return preds


def test_vindr_train_evaluate_infer(vindr_data, tmp_path):
    io = _io(tmp_path, vindr_data)
    proc = run_bundle(VINDR, ["train.yaml"], "training", epochs=2, image_size=64, **io)
    assert "val_auroc" in proc.stdout + proc.stderr
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=2.pt").is_file()
    state = load_checkpoint(models / "checkpoint_epoch=2.pt")  # the package's loader: weights_only=True
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]  # ignite keeps iterations

    run_bundle(VINDR, ["train.yaml", "evaluate.yaml"], image_size=64, **io)
    test = json.loads((vindr_data / "datalist_64.json").read_text())["test"]
    evaluated = _check_auroc_against_predictions(tmp_path / "eval", vindr_data, test)

    out = tmp_path / "infer"
    run_bundle(VINDR, ["inference.yaml"], image_size=64, dataset_dir=str(vindr_data), ckpt_dir=str(models),
               output_dir=str(out))
    inferred = _predictions(out / "predictions.csv")
    assert inferred.keys() == evaluated.keys()  # the test split, every image once
    for name, (p0, p1) in inferred.items():
        assert abs(p0 + p1 - 1.0) < 1e-4  # per-class probabilities
        assert p1 == pytest.approx(evaluated[name][1], abs=1e-5), name  # same model, same preprocessing


@pytest.mark.parametrize("attention", ["softmax", "sima"])
def test_vindr_attention_variant_by_override(vindr_data, tmp_path, attention):
    io = _io(tmp_path, vindr_data)
    run_bundle(VINDR, ["train.yaml"], "training", epochs=1, image_size=64, **{"network_def#attention": attention},
               **io)
    from monai.bundle import ConfigParser

    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not [k for k in weights if "gamma" in k or "beta" in k], "softmax-free parameters: the override was lost"
    parser = ConfigParser()
    parser.read_config(str(VINDR / "configs" / "train.yaml"))
    parser.update({"image_size": 64, "network_def#attention": attention})
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(weights)  # strict: exactly the parameters of the variant
    default = ConfigParser()
    default.read_config(str(VINDR / "configs" / "train.yaml"))
    default["image_size"] = 64
    assert "blocks.0.attn.q_gamma" in default.get_parsed_content("network_def").state_dict()  # the default differs


def test_duke_train_evaluate_infer(duke_data, tmp_path):
    io = _io(tmp_path, duke_data)
    size = [32, 32, 8]
    run_bundle(DUKE, ["train.yaml"], "training", epochs=1, image_size=size, **io)
    run_bundle(DUKE, ["train.yaml", "evaluate.yaml"], image_size=size, **io)
    test = json.loads((duke_data / "datalist.json").read_text())["test"]
    evaluated = _check_auroc_against_predictions(tmp_path / "eval", duke_data, test)
    run_bundle(DUKE, ["inference.yaml"], image_size=size, dataset_dir=str(duke_data),
               ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "infer"))
    inferred = _predictions(tmp_path / "infer" / "predictions.csv")
    assert inferred.keys() == evaluated.keys()
    for name, (_, p1) in inferred.items():
        assert p1 == pytest.approx(evaluated[name][1], abs=1e-5), name


def test_vindr_ddp_two_cpu_processes(vindr_data, tmp_path):
    io = _io(tmp_path, vindr_data)
    log = torchrun_bundle(VINDR, ["train.yaml", "multi_gpu_train.yaml"], epochs=1, image_size=64, **io)
    assert "backend=gloo rank=0/2" in log and "backend=gloo rank=1/2" in log
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(VINDR / "configs" / "inference.yaml"))
    parser["image_size"] = 64
    net = parser.get_parsed_content("network_def")
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu")
    net.load_state_dict(state)  # single-object checkpoint: the state dict itself, no "module." prefix

def test_vindr_resume_after_sigkill(vindr_data, tmp_path):
    """Killed (SIGKILL) after a checkpoint and resumed with ``--resume true``: network weights, AdamW state, LR
    schedule, random state, best metric and ``model.pt`` equal those of an uninterrupted run, exactly."""
    io = _io(tmp_path / "killed", vindr_data)
    cmd = bundle_cmd(VINDR, ["train.yaml"], "training", epochs=6, image_size=64, **io)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=VINDR)
    models = tmp_path / "killed" / "models"
    deadline = time.time() + 240
    # ignite writes a checkpoint to a temporary file and renames it, so one that is listed is complete
    while not list(models.glob("checkpoint_epoch=*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(models.glob("checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
    assert done, "no checkpoint written before the kill"
    resumed_from = int(done[-1].stem.split("=")[1])
    assert resumed_from < 6, f"training finished before the kill: {done}"
    out = run_bundle(VINDR, ["train.yaml"], "training", epochs=6, image_size=64, resume=True, **io)
    log = out.stdout + out.stderr
    assert f"from {done[-1]} (epoch {resumed_from} of 6)" in log
    assert f"Epoch[{resumed_from}] Metrics -- train_loss" not in log  # one line per epoch, not per iteration
    assert f"Epoch[{resumed_from + 1}] Metrics -- train_loss" in log and "Iter:" not in log

    ref = tmp_path / "uninterrupted"  # --verbose: a line per iteration; logging is not part of the run
    out = run_bundle(VINDR, ["train.yaml"], "training", epochs=6, image_size=64, verbose=True, **_io(ref, vindr_data))
    assert "Epoch: 6/6, Iter: 1/" in out.stdout + out.stderr
    assert_same_run_state(models / "checkpoint_epoch=6.pt", ref / "models" / "checkpoint_epoch=6.pt")
    assert_same_state(torch.load(models / "model.pt", weights_only=True),
                      torch.load(ref / "models" / "model.pt", weights_only=True), "model.pt")
    assert [p.name for p in models.glob("checkpoint_epoch=*.pt")] == ["checkpoint_epoch=6.pt"]  # the resumed one too


def test_bad_input_found_before_training(vindr_data, tmp_path):
    io = _io(tmp_path, vindr_data)
    missing = tmp_path / "nowhere"
    proc = run_bundle(
        VINDR, ["train.yaml"], "training", check=False, image_size=64, **{**io, "dataset_dir": str(missing)}
    )
    assert proc.returncode != 0 and f"dataset_dir {missing} does not exist" in proc.stderr

    bad = tmp_path / "bad"
    bad.mkdir()
    body = json.loads((vindr_data / "datalist_64.json").read_text())
    for item in body["training"] + body["validation"]:
        item["image"] = str(vindr_data / item["image"])
    body["training"][0]["image"] = str(tmp_path / "gone.png")
    body["validation"][0]["label"] = 5
    (bad / "datalist_64.json").write_text(json.dumps(body))
    proc = run_bundle(VINDR, ["train.yaml"], "training", check=False, image_size=64, **{**io, "dataset_dir": str(bad)})
    assert proc.returncode != 0
    assert f"{tmp_path / 'gone.png'}: image file missing" in proc.stderr
    assert "label 5 is not a class index in [0, 2)" in proc.stderr
    assert not (tmp_path / "models").exists()  # nothing trained
