"""``check_datalist``: every problem it reports, in order, with the file named, for classification and
segmentation (PNG and NIfTI), the size limits, ``max_problems`` and the key / split arguments (blind spots
found by mutation testing of ``monai_ext.workflows.checks``, see docs/testing.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_ext.data.limits import ENV_BYTES, ENV_PIXELS, SizeLimitError
from monai_ext.workflows import checks
from monai_ext.workflows.checks import DatasetError, check_datalist, load_datalist


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _nifti(path: Path, arr: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def _write(root: Path, body: dict) -> Path:
    (root / "datalist.json").write_text(json.dumps(body))
    return root / "datalist.json"


def _problems(err: pytest.ExceptionInfo, root: Path) -> list[str]:
    """The problem lines of a :class:`DatasetError`, after checking its first line."""
    head, *lines = str(err.value).split("\n")
    assert head == f"dataset {root} has {len([x for x in lines if not x.startswith('  (')])} problem(s):"
    return [x[2:] for x in lines]


def test_classification_problems_all_listed_in_order(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4)))
    good = {"image": "a.png"}
    dl = _write(tmp_path, {
        "training": [
            {**good, "label": 0}, {**good, "label": 1}, {**good, "label": [0.3, 0.7]}, {**good, "label": [0, 1]},
            {**good, "label": 2}, {**good, "label": -1}, {**good, "label": "1"}, {**good, "label": [0.3, 1.5]},
            {**good, "label": [-0.5, 1]}, {**good, "label": [1]}, {**good, "label": [0, 1, 0]}, {**good, "label": None},
            {"label": 0}, {"image": "gone.png", "label": 1},
        ],
        "validation": [{**good, "label": 1}, {**good, "label": [0.5, 0.5]}],
    })
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path)
    t = f"{dl} [training]"
    assert _problems(err, tmp_path) == [
        f"{t}[4]: label 2 is not a class index in [0, 2)",
        f"{t}[5]: label -1 is not a class index in [0, 2)",
        f"{t}[6]: label {str(tmp_path / '1')!r} is not a class index in [0, 2)",  # a string label is a path
        f"{t}[7]: label [0.3, 1.5] is not a class index in [0, 2)",
        f"{t}[8]: label [-0.5, 1] is not a class index in [0, 2)",
        f"{t}[9]: label [1] is not a class index in [0, 2)",
        f"{t}[10]: label [0, 1, 0] is not a class index in [0, 2)",
        f"{t}[11]: label None is not a class index in [0, 2)",
        f"{t}[12]: no 'image' path",
        f"{tmp_path / 'gone.png'}: image file missing (listed in {t}[13])",
        f"{dl}: split 'validation' (2 cases) has no case of class [0]: its metric would be undefined (nan)",
    ]
    # three classes: label 2 is fine, and a soft label needs three values
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, num_classes=3, splits=("training",))
    assert [p.split(": ", 1)[1] for p in _problems(err, tmp_path)][:5] == [
        "label [0.3, 0.7] is not a class index in [0, 3)", "label [0, 1] is not a class index in [0, 3)",
        "label -1 is not a class index in [0, 3)", f"label {str(tmp_path / '1')!r} is not a class index in [0, 3)",
        "label [0.3, 1.5] is not a class index in [0, 3)",
    ]


def test_classification_class_coverage_and_arguments(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4)))
    body = {"training": [{"img": "a.png", "y": 0}, {"img": "a.png", "y": 1}],
            "validation": [{"img": "a.png", "y": 1}], "tuning": [{"img": "a.png", "y": [0.2, 0.8]}]}
    _write(tmp_path, body)
    kw = dict(image_key="img", label_key="y")
    # the class check covers the splits in all_classes_in only; soft labels only: no class index to look at
    assert check_datalist(tmp_path, splits=("training", "tuning"), all_classes_in=("tuning",), **kw) == {
        "training": 2, "tuning": 1}
    assert check_datalist(tmp_path, all_classes_in=("training",), **kw) == {"training": 2, "validation": 1}
    with pytest.raises(DatasetError, match=r"split 'validation' \(1 cases\) has no case of class \[0\]"):
        check_datalist(tmp_path, **kw)
    with pytest.raises(DatasetError, match=r"\[training\]\[0\]: no 'image' path"):
        check_datalist(tmp_path, splits=("training",))  # the default keys are not in these entries
    with pytest.raises(ValueError, match="task must be 'classification' or 'segmentation', got 'detection'"):
        check_datalist(tmp_path, task="detection")
    # class 2 of 3 missing from training, classes 0 and 2 from validation
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, num_classes=3, **kw)
    assert [p.split("split ", 1)[1] for p in _problems(err, tmp_path)] == [
        "'training' (2 cases) has no case of class [2]: its metric would be undefined (nan)",
        "'validation' (1 cases) has no case of class [0, 2]: its metric would be undefined (nan)",
    ]


def test_segmentation_problems_png_and_nifti(tmp_path):
    img = np.arange(30).reshape(6, 5)
    _png(tmp_path / "i.png", img)
    _png(tmp_path / "ok.png", np.tile([0, 1, 2, 1, 0], (6, 1)))
    _png(tmp_path / "high.png", np.tile([0, 3, 200, 1, 0], (6, 1)))
    _png(tmp_path / "wide.png", np.zeros((5, 6)))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    vol = np.zeros((4, 4, 3), np.float32)
    _nifti(tmp_path / "v.nii", vol)
    _nifti(tmp_path / "half.nii", np.full((4, 4, 3), 0.5, np.float32))
    _nifti(tmp_path / "neg.nii.gz", np.full((4, 4, 3), -1, np.int16))
    _nifti(tmp_path / "ok.nii.gz", np.ones((4, 4, 3), np.uint8))
    _nifti(tmp_path / "vol4d.nii.gz", np.zeros((4, 4, 3, 2), np.float32))  # channels last: spatial (4, 4, 3)
    dl = _write(tmp_path, {"training": [
        {"image": "i.png", "label": "ok.png"}, {"image": "i.png", "label": "high.png"}, {"image": "i.png"},
        {"image": "i.png", "label": "none.png"}, {"image": "i.png", "label": "wide.png"},
        {"image": "i.png", "label": "junk.png"}, {"image": "v.nii", "label": "half.nii"},
        {"image": "v.nii", "label": "neg.nii.gz"}, {"image": "vol4d.nii.gz", "label": "ok.nii.gz"},
    ]})
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, splits=("training",), task="segmentation", num_classes=3)
    t = f"{dl} [training]"
    problems = _problems(err, tmp_path)
    assert problems[:5] == [
        f"{tmp_path / 'high.png'}: label values [3, 200] outside the declared classes 0..2",
        f"{t}[2]: no 'label' path",
        f"{tmp_path / 'none.png'}: label file missing (listed in {t}[3])",
        f"{tmp_path / 'wide.png'}: label shape (5, 6) differs from image i.png shape (6, 5)",
        f"{tmp_path / 'junk.png'}: cannot read image header (UnidentifiedImageError: cannot identify image file "
        f"'{tmp_path / 'junk.png'}')",
    ]
    assert problems[5:] == [
        f"{tmp_path / 'half.nii'}: label values [0.5] outside the declared classes 0..2",
        f"{tmp_path / 'neg.nii.gz'}: label values [-1] outside the declared classes 0..2",
    ]
    # without the value check only the structural problems remain; num_classes 201 accepts 200
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, splits=("training",), task="segmentation", num_classes=3, check_label_values=False)
    assert _problems(err, tmp_path) == problems[1:5]
    _write(tmp_path, {"training": [{"image": "i.png", "label": "high.png"}, {"image": "v.nii", "label": "v.nii"}]})
    assert check_datalist(tmp_path, splits=("training",), task="segmentation", num_classes=201) == {"training": 2}


def test_max_problems_stops_and_says_so(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4)))
    _write(tmp_path, {"training": [{"image": f"gone{i}.png", "label": 0} for i in range(6)],
                      "validation": [{"image": "gone.png", "label": 0}]})
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, max_problems=3, all_classes_in=())
    problems = _problems(err, tmp_path)
    assert [p.split(":")[0] for p in problems[:3]] == [str(tmp_path / f"gone{i}.png") for i in range(3)]
    assert problems[3:] == ["(stopped after 3 problems)"]
    # the default limit is 20; another datalist file name
    (tmp_path / "datalist.json").unlink()
    (tmp_path / "v2.json").write_text(json.dumps({"training": [{"image": f"g{i}.png", "label": 0} for i in range(25)]}))
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, datalist="v2.json", splits=("training",), all_classes_in=())
    problems = _problems(err, tmp_path)
    assert len(problems) == 21 and problems[-1] == "(stopped after 20 problems)"
    assert problems[19].startswith(f"{tmp_path / 'g19.png'}: image file missing (listed in {tmp_path / 'v2.json'} ")
    _write(tmp_path, {"training": [{"image": f"gone{i}.png", "label": 0} for i in range(6)],
                      "validation": [{"image": "gone.png", "label": 0}]})
    # fewer problems than the limit: all listed, no note
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, max_problems=8, all_classes_in=())
    problems = _problems(err, tmp_path)
    assert len(problems) == 7 and not any("stopped" in p for p in problems)


def test_size_limits_name_the_file(tmp_path, monkeypatch):
    """Headers beyond MONAI_EXT_MAX_* are problems naming the file; images count 4 bytes (float32) per element,
    label volumes 1 byte (uint8)."""
    _png(tmp_path / "a.png", np.zeros((4, 5)))
    _write(tmp_path, {"training": [{"image": "a.png", "label": 0}, {"image": "a.png", "label": 1}]})
    monkeypatch.setenv(ENV_PIXELS, "19")
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, splits=("training",))
    problems = _problems(err, tmp_path)
    assert len(problems) == 2 and problems[0] == problems[1]
    assert problems[0].startswith(f"{tmp_path / 'a.png'}: image header declares 4x5x1 = 20 elements")
    monkeypatch.setenv(ENV_PIXELS, "20")
    monkeypatch.setenv(ENV_BYTES, "80")  # 20 elements as float32
    assert check_datalist(tmp_path, splits=("training",)) == {"training": 2}
    monkeypatch.setenv(ENV_BYTES, "79")
    with pytest.raises(DatasetError, match=r"a\.png: image header declares 4x5x1 = 20 elements \(80 B decoded\)"):
        check_datalist(tmp_path, splits=("training",))

    monkeypatch.delenv(ENV_PIXELS)
    _nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 2), np.float32))  # 128 elements: 512 B as float32
    _nifti(tmp_path / "big.nii.gz", np.zeros((8, 8, 4), np.float32))  # 1024 B
    _nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8), np.uint8))  # 512 elements: 512 B as uint8
    _write(tmp_path, {"training": [{"image": "img.nii.gz", "label": "lab.nii.gz"},
                                   {"image": "big.nii.gz", "label": "lab.nii.gz"}]})
    monkeypatch.setenv(ENV_BYTES, "512")
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, splits=("training",), task="segmentation")
    problems = _problems(err, tmp_path)
    lab = tmp_path / "lab.nii.gz"
    assert problems[0] == f"{lab}: label shape (8, 8, 8) differs from image img.nii.gz shape (8, 8, 2)"
    assert problems[1].startswith(f"{tmp_path / 'big.nii.gz'}: NIfTI header declares 8x8x4 = 256 elements (1 KiB")
    assert len(problems) == 2


def test_load_datalist_other_path_keys_keep_non_strings(tmp_path):
    _write(tmp_path, {"training": [{"image": "a.png", "mask": "m.png", "weight": 2, "ref": 3}]})
    items = load_datalist(tmp_path, "training", path_keys=("image", "mask", "weight"))
    assert items == [{"image": str(tmp_path / "a.png"), "mask": str(tmp_path / "m.png"), "weight": 2, "ref": 3}]


def test_label_values_are_read_as_one_byte_per_voxel(tmp_path, monkeypatch):
    """A label volume is decoded as uint8: it fits a byte limit its float32 image would not."""
    _nifti(tmp_path / "lab.nii.gz", np.tile(np.array([0, 2, 1], np.uint8), (4, 4, 1)))  # 48 voxels
    monkeypatch.setenv(ENV_BYTES, "48")
    np.testing.assert_array_equal(checks._label_values(tmp_path / "lab.nii.gz"), [0, 1, 2])
    monkeypatch.setenv(ENV_BYTES, "47")
    with pytest.raises(SizeLimitError, match=r"lab\.nii\.gz: NIfTI header declares 4x4x3 = 48 elements \(48 B"):
        checks._label_values(tmp_path / "lab.nii.gz")


def test_damaged_labels_many_bad_values_and_the_ok_log(tmp_path, caplog):
    """A label file whose header reads but whose voxels do not (truncated) is a problem naming it, like any other;
    at most 10 bad values are listed; a clean dataset logs its split sizes."""
    _png(tmp_path / "i.png", np.zeros((100, 100)))
    _png(tmp_path / "l.png", np.arange(10000).reshape(100, 100) % 3)
    body = (tmp_path / "l.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(body[: len(body) // 2])
    _nifti(tmp_path / "v.nii.gz", np.zeros((20, 20, 10), np.float32))
    _nifti(tmp_path / "lv.nii.gz", np.random.default_rng(0).integers(0, 3, (20, 20, 10)).astype(np.uint8))
    body = (tmp_path / "lv.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(body[: len(body) // 2])
    _png(tmp_path / "many.png", np.arange(10000).reshape(100, 100) % 16)
    _write(tmp_path, {"training": [
        {"image": "i.png", "label": "cut.png"}, {"image": "v.nii.gz", "label": "cut.nii.gz"},
        {"image": "i.png", "label": "many.png"}, {"image": "i.png", "label": "l.png"}]})
    with pytest.raises(DatasetError) as err:
        check_datalist(tmp_path, splits=("training",), task="segmentation", num_classes=3)
    first, second, third = _problems(err, tmp_path)
    assert first.startswith(f"{tmp_path / 'cut.png'}: cannot read the label voxels (OSError: image file is truncated")
    assert second.startswith(f"{tmp_path / 'cut.nii.gz'}: cannot read the label voxels (EOFError: ")
    assert third == f"{tmp_path / 'many.png'}: label values [3, 4, 5, 6, 7, 8, 9, 10, 11, 12] outside the declared " \
        "classes 0..2"
    _write(tmp_path, {"training": [{"image": "i.png", "label": "l.png"}],
                      "validation": [{"image": "v.nii.gz", "label": "lv.nii.gz"}] * 2})
    caplog.set_level(logging.INFO, logger="monai_ext.workflows.checks")
    assert check_datalist(tmp_path, task="segmentation", num_classes=3) == {"training": 1, "validation": 2}
    assert [r.getMessage() for r in caplog.records if r.name == "monai_ext.workflows.checks"] == [
        f"dataset {tmp_path} ok: {{'training': 1, 'validation': 2}}"]


def test_load_datalist_joins_to_the_dataset_folder_and_joins_image_lists(tmp_path):
    """Entries are relative to ``dataset_dir`` even when the datalist sits in a subfolder; a list of image paths
    (e.g. several sequences of one case) is joined element by element."""
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "v2.json").write_text(json.dumps({"training": [
        {"image": ["t1/a.nii.gz", "t2/a.nii.gz"], "label": "seg/a.nii.gz"}]}))
    assert load_datalist(tmp_path, "training", datalist="splits/v2.json") == [
        {"image": [str(tmp_path / "t1" / "a.nii.gz"), str(tmp_path / "t2" / "a.nii.gz")],
         "label": str(tmp_path / "seg" / "a.nii.gz")}]
    # a decathlon test list of plain paths: the path is the entry's image, kept as stored when not a path key
    _write(tmp_path, {"test": ["imagesTs/b.nii.gz"]})
    assert load_datalist(tmp_path, "test", path_keys=("label",)) == [{"image": "imagesTs/b.nii.gz"}]
