"""The PAIP APF-UNETR bundle end to end through ``python -m monai.bundle run`` (tiny sizes): train,
evaluate at full resolution after unpatching, inference (mask PNG of the input's size), bad input found
before training."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, bundle_cmd, run_bundle, torchrun_bundle
from PIL import Image

from monai_ext.data import paip
from monai_ext.utils.checkpoint import load_checkpoint

BUNDLE = BUNDLES / "apf_unetr_paip_segmentation"
# a small network and 64 APF tokens (patch 8) per 512 x 512 image keep one epoch to seconds
TINY = {"presets#cpu#hidden_size": 32, "presets#cpu#mlp_dim": 64, "presets#cpu#num_layers": 2,
        "presets#cpu#num_heads": 2, "presets#cpu#feature_size": 8, "presets#cpu#num_tokens": 64}


bundle_cmd = functools.partial(bundle_cmd, BUNDLE)
run_bundle = functools.partial(run_bundle, BUNDLE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paip_bundle")
    paip.synthesize(root / "raw", cases=5, seed=0, size=512)
    paip.prepare(root / "raw", root / "prepared", resolutions=[512], split=(2, 2, 1))
    body = json.loads((root / "prepared" / "datalist_512.json").read_text())
    assert [len(body[s]) for s in ("training", "validation", "test")] == [2, 2, 1]
    return root / "prepared"


def _io(tmp: Path, data: Path) -> dict:
    return dict(dataset_dir=str(data), ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "eval"),
                log_dir=str(tmp / "logs"), num_workers=0, **TINY)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_train_evaluate_infer(data, tmp_path):
    io = _io(tmp_path, data)
    proc = run_bundle(["train.yaml"], "training", epochs=1, val_interval=1, **io)
    assert "val_mean_dice" in proc.stdout + proc.stderr
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=1.pt").is_file()
    state = load_checkpoint(models / "checkpoint_epoch=1.pt")  # the package's loader: weights_only=True
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    weights = torch.load(models / "model.pt", map_location="cpu")
    assert weights.keys() == state["network"].keys()
    assert weights["unetr.out.conv.conv.weight"].shape[0] == 2

    # evaluation on the test split at 512 x 512 after unpatching
    run_bundle(["train.yaml", "evaluate.yaml"], **io)
    metrics = dict(line.split(",", 1) for line in (tmp_path / "eval" / "metrics.csv").read_text().splitlines())
    assert set(metrics) == {"mean_dice", "mean_iou", "hd95"}
    dice, iou = float(metrics["mean_dice"]), float(metrics["mean_iou"])
    assert 0.0 <= iou <= dice <= 1.0
    assert dice == pytest.approx(2 * iou / (1 + iou), abs=1e-4)  # one image: Dice and IoU of the same masks
    with open(tmp_path / "eval" / "mean_dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = json.loads((data / "datalist_512.json").read_text())["test"]
    assert [Path(r["filename"]).name for r in rows] == [Path(e["image"]).name for e in test]

    # inference: the prepared test image and a non-square crop of it; masks keep each input's H x W
    src = data / test[0]["image"]
    crop = tmp_path / "crop.png"
    Image.fromarray(_png(src)[:384, :448]).save(crop)
    run_bundle(["inference.yaml"], ckpt_dir=io["ckpt_dir"], output_dir=str(tmp_path / "inf"),
               input_files=[str(src), str(crop)], **TINY)
    for inp in (src, crop):
        out = tmp_path / "inf" / f"{inp.stem}_prediction.png"
        assert out.is_file(), sorted(p.name for p in (tmp_path / "inf").iterdir())
        mask = _png(out)
        assert mask.shape == _png(inp).shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1}


def test_bad_input_found_before_training(data, tmp_path):
    io = _io(tmp_path, data)
    missing = tmp_path / "nowhere"
    proc = run_bundle(["train.yaml"], "training", check=False, **{**io, "dataset_dir": str(missing)})
    assert proc.returncode != 0 and f"dataset_dir {missing} does not exist" in proc.stderr

    # a copy of the prepared set with one mask of the wrong size and one with a value outside {0, 1}
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    body = json.loads((bad / "datalist_512.json").read_text())
    first, second = bad / body["training"][0]["label"], bad / body["training"][1]["label"]
    Image.fromarray(_png(first)[:500]).save(first)
    arr = _png(second).copy()
    arr[0, 0] = 255
    Image.fromarray(arr).save(second)
    proc = run_bundle(["train.yaml"], "training", check=False, **{**io, "dataset_dir": str(bad)})
    assert proc.returncode != 0
    assert f"{first}: label shape (500, 512) differs from image" in proc.stderr
    assert f"{second}: label values [255] outside the declared classes 0..1" in proc.stderr
    assert "train_loss" not in proc.stdout + proc.stderr
    assert not (tmp_path / "models").exists()


def test_ddp_two_cpu_processes(data, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks train and validate on their shard, rank 0 saves a
    checkpoint that loads into the single-process network; distributed evaluation gives the metrics of
    a single-process evaluation of the same checkpoint."""
    io = _io(tmp_path, data)
    log = torchrun_bundle(BUNDLE, ["train.yaml", "multi_gpu_train.yaml"], epochs=1, val_interval=1, **io)
    assert "backend=gloo rank=0/2" in log and "backend=gloo rank=1/2" in log
    assert "val_mean_dice" in log
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.update(TINY)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu"))  # no "module." prefix

    # evaluation on the validation split (2 images, one per rank) vs the same in one process
    ev = dict(io, eval_split="validation")
    log = torchrun_bundle(BUNDLE, ["train.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"], **ev)
    ddp = (tmp_path / "eval" / "metrics.csv").read_text()
    run_bundle(["train.yaml", "evaluate.yaml"], **dict(ev, output_dir=str(tmp_path / "eval1")))
    single = (tmp_path / "eval1" / "metrics.csv").read_text()
    ddp_m = dict(line.split(",", 1) for line in ddp.splitlines())
    one_m = dict(line.split(",", 1) for line in single.splitlines())
    assert ddp_m.keys() == one_m.keys()
    val = json.loads((data / "datalist_512.json").read_text())["validation"]
    with open(tmp_path / "eval" / "mean_dice_raw.csv", newline="") as f:  # gathered from both ranks
        assert sorted(Path(r["filename"]).name for r in csv.DictReader(f)) == sorted(Path(e["image"]).name for e in val)
    for k in one_m:
        assert float(ddp_m[k]) == pytest.approx(float(one_m[k]), abs=1e-5), (k, ddp, single)
