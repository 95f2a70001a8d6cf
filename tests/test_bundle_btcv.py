"""The BTCV APF-UNETR bundle end to end through ``python -m monai.bundle run`` (tiny sizes): train,
evaluate (3D Dice per organ on volumes rebuilt from slices), inference (NIfTI label volume with the
input's geometry), bad input found before training."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, bundle_cmd, run_bundle

from monai_ext.data import btcv
from monai_ext.utils.checkpoint import load_checkpoint

BUNDLE = BUNDLES / "apf_unetr_btcv_segmentation"
# a small network and 16 APF tokens per 32 x 32 slice keep one epoch to seconds
TINY = {"presets#cpu#hidden_size": 32, "presets#cpu#mlp_dim": 64, "presets#cpu#num_layers": 2,
        "presets#cpu#num_heads": 2, "presets#cpu#feature_size": 8, "presets#cpu#num_tokens": 16}


bundle_cmd = functools.partial(bundle_cmd, BUNDLE)
run_bundle = functools.partial(run_bundle, BUNDLE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("btcv_bundle")
    btcv.synthesize(root / "raw", cases=4, seed=0, size=(32, 32, 8))
    btcv.prepare(root / "raw", root / "prepared", size=(32, 32, -1))
    return root


def _io(tmp: Path, data: Path) -> dict:
    return dict(dataset_dir=str(data / "prepared"), ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "eval"),
                log_dir=str(tmp / "logs"), num_workers=0, **TINY)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_evaluate_infer(data, tmp_path):
    io = _io(tmp_path, data)
    proc = run_bundle(["train.yaml"], "training", epochs=1, val_interval=1, num_samples=2, **io)
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log and "val_organ_dice" in log
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=1.pt").is_file()
    state = load_checkpoint(models / "checkpoint_epoch=1.pt")  # the package's loader: weights_only=True
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    weights = torch.load(models / "model.pt", map_location="cpu")
    assert weights.keys() == state["network"].keys()
    assert weights["unetr.out.conv.conv.weight"].shape[0] == 14  # 13 organs + background

    # evaluation: one row per validation volume, Dice of the 13 organs on the rebuilt 3D volume
    run_bundle(["train.yaml", "evaluate.yaml"], **io)
    metrics = dict(line.split(",", 1) for line in (tmp_path / "eval" / "metrics.csv").read_text().splitlines())
    rows = _read_csv(tmp_path / "eval" / "mean_dice_raw.csv")
    val = json.loads((data / "prepared" / "datalist.json").read_text())["validation"]
    assert [Path(r["filename"]).name for r in rows] == [Path(e["image"]).name for e in val]
    assert [k for k in rows[0] if k.startswith("class")] == [f"class{i}" for i in range(13)]
    # mean_dice = MONAI's MEAN reduction of the per-organ values (NaN: organ absent from the volume)
    per_case = np.array([[float(r[f"class{i}"]) for i in range(13)] for r in rows])
    assert not np.isnan(per_case).all(axis=1).any()
    assert float(metrics["mean_dice"]) == pytest.approx(np.mean(np.nanmean(per_case, axis=1)), abs=1e-4)
    hd_rows = _read_csv(tmp_path / "eval" / "hd95_raw.csv")
    assert [r["filename"] for r in hd_rows] == [r["filename"] for r in rows]
    assert "hd95" in metrics

    # inference: the prepared test volume (RAS) and a raw one stored LPS, as the synthetic/real raw data are
    raw_in = tmp_path / "rawin" / "raw0061.nii.gz"
    raw_in.parent.mkdir()
    shutil.copy(data / "raw" / "imagesTs" / "img0061.nii.gz", raw_in)
    prepared_in = data / "prepared" / "imagesTs" / "img0061.nii.gz"
    run_bundle(["inference.yaml"], ckpt_dir=io["ckpt_dir"], output_dir=str(tmp_path / "inf"),
               input_files=[str(prepared_in), str(raw_in)], **TINY)
    for src in (prepared_in, raw_in):
        stem = src.name[: -len(".nii.gz")]
        out = tmp_path / "inf" / stem / f"{stem}_seg.nii.gz"
        assert out.is_file(), sorted(p.name for p in (tmp_path / "inf").rglob("*"))
        img, seg = nib.load(str(src)), nib.load(str(out))
        assert seg.shape == img.shape
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
        assert seg.get_data_dtype() == np.uint8
        values = np.unique(np.asarray(seg.dataobj))
        assert values.min() >= 0 and values.max() <= 13
    assert nib.aff2axcodes(nib.load(str(raw_in)).affine) != ("R", "A", "S")  # the orientation was undone


def test_bad_input_found_before_training(data, tmp_path):
    io = _io(tmp_path, data)
    missing = tmp_path / "nowhere"
    proc = run_bundle(["train.yaml"], "training", check=False, **{**io, "dataset_dir": str(missing)})
    assert proc.returncode != 0 and f"dataset_dir {missing} does not exist" in proc.stderr

    # a copy of the prepared set with one label of the wrong shape and one with an undeclared class (14)
    bad = tmp_path / "bad"
    shutil.copytree(data / "prepared", bad)
    body = json.loads((bad / "datalist.json").read_text())
    first, second = (bad / body["training"][0]["label"]), (bad / body["training"][1]["label"])
    lab = nib.load(str(first))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :-2], lab.affine), str(first))
    lab = nib.load(str(second))
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 14
    nib.save(nib.Nifti1Image(arr, lab.affine), str(second))
    proc = run_bundle(["train.yaml"], "training", check=False, **{**io, "dataset_dir": str(bad)})
    assert proc.returncode != 0
    assert f"{first}: label shape (32, 30, " in proc.stderr and "differs from image" in proc.stderr
    assert f"{second}: label values [14] outside the declared classes 0..13" in proc.stderr
    assert "train_loss" not in proc.stdout + proc.stderr
    assert not (tmp_path / "models").exists()  # nothing trained
