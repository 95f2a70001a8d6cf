"""Every ``prepare`` rejects bad images and unusable splits (issue 13, items 3 and 4): non-finite, constant
and empty images go to ``skipped.json`` with file and reason; ``monai-ext prepare`` exits non-zero with a
one-line summary naming the file when a label CSV is header-only or lacks a required column, or when a
split ends up empty or without one of the classes; training refuses a one-class validation split."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_ext.cli import main as cli_main
from monai_ext.data import btcv
from monai_ext.data import vindr_cxr as vindr
from monai_ext.data.common import (
    DataError,
    check_image_content,
    data_origin,
    split_problems,
)
from monai_ext.data.synthetic import btcv as synth_btcv
from monai_ext.data.synthetic import vindr_cxr as synth_vindr
from monai_ext.workflows.checks import DatasetError, check_datalist, load_datalist


def _cli_errors(caplog, argv: list[str]) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc = cli_main(argv)
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_check_image_content():
    check_image_content(np.array([0.0, 1.0]), "ok.nii")
    for arr, reason in (
        (np.zeros((0, 4)), "empty"),
        (np.array([1.0, np.inf]), "non-finite"),
        (np.full((3, 3), np.nan), "non-finite"),
        (np.full((4, 4), 7, np.int16), "constant"),
    ):
        with pytest.raises(DataError, match=reason) as e:
            check_image_content(arr, "/x/case.nii.gz", "CT volume")
        assert e.value.path == "/x/case.nii.gz"


def test_btcv_nan_and_constant_ct_are_skipped(tmp_path):
    raw = tmp_path / "raw"
    synth_btcv.synthesize(raw, cases=4, seed=0, size=(24, 24, 6))  # ids 1, 2, 3 (training), 35 (validation)
    for name, fill in (("img0001.nii.gz", np.nan), ("img0002.nii.gz", 0.0)):
        path = raw / "imagesTr" / name
        old = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.full(old.shape, fill, np.float32), old.affine), str(path))
    out = tmp_path / "prepared"
    dl = btcv.prepare(raw, out, size=(16, 16, -1))
    assert [e["case"] for e in dl["training"]] == ["0003"]
    assert [e["case"] for e in dl["validation"]] == ["0035"]
    skipped = {e["case"]: e for e in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == {"0001", "0002"}
    assert "non-finite" in skipped["0001"]["reason"] and skipped["0001"]["file"].endswith("img0001.nii.gz")
    assert "constant" in skipped["0002"]["reason"] and skipped["0002"]["file"].endswith("img0002.nii.gz")
    assert not (out / "imagesTr" / "img0001.nii.gz").exists()
    body = json.loads((out / "datalist.json").read_text())
    assert body["data_origin"]["synthetic"] is True and body["data_origin"]["dataset"] == "btcv"


def _vindr_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval=0)
        w.writeheader()
        w.writerows(rows)


def test_vindr_header_only_csv_exits_nonzero(tmp_path, caplog):
    raw = tmp_path / "raw"
    _vindr_csv(raw / vindr.TRAIN_CSV, [], ["image_id", "rad_id", *vindr.FINDINGS])
    rc, errors = _cli_errors(
        caplog, ["prepare", "vindr_cxr", "--raw", str(raw), "--out", str(tmp_path / "out"), "--resolutions", "16"]
    )
    assert rc == 1
    assert len(errors) == 1 and "\n" not in errors[-1]
    assert "image_labels_train.csv" in errors[-1] and "no data rows" in errors[-1]


def test_vindr_csv_without_rad_id_is_refused(tmp_path, caplog):
    raw = tmp_path / "raw"
    _vindr_csv(raw / vindr.TRAIN_CSV, [{"image_id": "a" * 32, "Cardiomegaly": 1}], ["image_id", *vindr.FINDINGS])
    with pytest.raises(DataError, match="rad_id") as e:
        vindr.prepare(raw, tmp_path / "out", resolutions=[16])
    assert e.value.path.endswith("image_labels_train.csv")
    rc, errors = _cli_errors(
        caplog, ["prepare", "vindr_cxr", "--raw", str(raw), "--out", str(tmp_path / "o2"), "--resolutions", "16"]
    )
    assert rc == 1 and "rad_id" in errors[-1] and "image_labels_train.csv" in errors[-1]


def test_vindr_split_without_positive_cases_exits_nonzero(tmp_path, caplog):
    raw = tmp_path / "raw"
    synth_vindr.synthesize(raw, cases=6, seed=0)
    train_csv = raw / vindr.TRAIN_CSV
    with open(train_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["Cardiomegaly"] = "0"
    _vindr_csv(train_csv, rows, list(rows[0]))
    out = tmp_path / "out"
    rc, errors = _cli_errors(
        caplog, ["prepare", "vindr_cxr", "--raw", str(raw), "--out", str(out), "--resolutions", "16"]
    )
    assert rc == 1 and len(errors) == 1 and "\n" not in errors[0]
    assert str(out / "datalist.json") in errors[0] and "has no case of class [1]" in errors[0]
    # the library function itself still writes the datalist (for inspection)
    assert json.loads((out / "datalist.json").read_text())["data_origin"]["synthetic"] is True


def test_split_problems():
    dl = {"training": [{"label": 0}, {"label": 1}], "validation": [{"label": 1}], "test": []}
    assert split_problems(dl, classes=(0, 1)) == [
        "split 'validation' (1 cases) has no case of class [0]",
        "split 'test' is empty",
    ]
    assert split_problems(dl, required=("training",), classes=(0, 1)) == []


def test_check_datalist_refuses_one_class_validation(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    entry = {"image": "a.png"}
    body = {
        "training": [{**entry, "label": 0}, {**entry, "label": 1}],
        "validation": [{**entry, "label": 1}, {**entry, "label": 1}],
        "test": [],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(body))
    with pytest.raises(DatasetError, match=r"'validation' \(2 cases\) has no case of class \[0\]"):
        check_datalist(tmp_path)
    body["validation"].append({**entry, "label": 0})
    (tmp_path / "datalist.json").write_text(json.dumps(body))
    assert check_datalist(tmp_path) == {"training": 2, "validation": 3}


def test_data_origin_without_marker(tmp_path):
    assert data_origin(tmp_path)["synthetic"] is False


# ---------------------------------------------------------------------------------------------- load_datalist
def _datalist(tmp_path: Path, body: dict) -> Path:
    (tmp_path / "datalist.json").write_text(json.dumps(body))
    return tmp_path


def test_load_datalist_paths_labels_and_other_keys(tmp_path):
    """image / label strings joined to the folder (label lists too), a class index left alone, other keys kept as
    stored even when they name an existing file (so an entry does not depend on what the folder holds)."""
    (tmp_path / "images_96").mkdir()
    (tmp_path / "images_96" / "a.png").write_bytes(b"x")
    root = _datalist(
        tmp_path,
        {
            "training": [
                {"image": "images_64/a.png", "image_96": "images_96/a.png", "label": 1, "case": "a", "votes": [1, 0]},
                {"image": "b.nii.gz", "label": ["l1.nii.gz", "l2.nii.gz"]},
            ]
        },
    )
    items = load_datalist(root, "training")
    assert items[0] == {
        "image": str(root / "images_64" / "a.png"),
        "image_96": "images_96/a.png",
        "label": 1,
        "case": "a",
        "votes": [1, 0],
    }
    assert items[1] == {"image": str(root / "b.nii.gz"), "label": [str(root / "l1.nii.gz"), str(root / "l2.nii.gz")]}
    # a relative dataset folder stays relative (the run hash keeps relative paths as they are)
    rel = load_datalist(Path(os.path.relpath(root)), "training")
    assert rel[0]["image"] == os.path.join(os.path.relpath(root), "images_64", "a.png")
    # path_keys: other keys joined on request, label kept as stored when not listed
    items = load_datalist(root, "training", path_keys=("image", "image_96"))
    assert items[0]["image_96"] == str(root / "images_96" / "a.png") and items[1]["label"] == ["l1.nii.gz", "l2.nii.gz"]


def test_load_datalist_decathlon_test_split_and_empty_split(tmp_path):
    """A decathlon-style ``test`` list of plain paths (MONAI's format, e.g. BTCV's dataset_0.json) is read as
    entries; an empty split is an empty list. The previous hand-written reader failed on the plain paths."""
    root = _datalist(tmp_path, {"training": [], "test": ["imagesTs/img0061.nii.gz", "imagesTs/img0062.nii.gz"]})
    assert load_datalist(root, "test") == [{"image": str(root / "imagesTs" / f"img006{i}.nii.gz")} for i in (1, 2)]
    assert load_datalist(root, "training") == []


def test_load_datalist_errors_name_the_datalist(tmp_path):
    with pytest.raises(DatasetError, match=r"datalist.json: datalist not found; create it with `monai-ext synth"):
        load_datalist(tmp_path, "training")
    (tmp_path / "datalist.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"datalist.json: not valid JSON"):
        load_datalist(tmp_path, "training")
    _datalist(tmp_path, {"training": [{"image": "a.png"}], "seed": 0})
    with pytest.raises(DatasetError, match=r"datalist.json: no 'validation' split \(has \['training'\]\)"):
        load_datalist(tmp_path, "validation")
    _datalist(tmp_path, {"training": "a.png"})
    with pytest.raises(DatasetError, match=r"datalist.json: split 'training' is not a list of entries \(str\)"):
        load_datalist(tmp_path, "training")
    _datalist(tmp_path, {"training": ["a.png"]})
    with pytest.raises(DatasetError, match=r"datalist.json: split 'training' holds an unusable entry"):
        load_datalist(tmp_path, "training")
