"""BTCV preparation and synthetic data: synth -> prepare -> a batch, real NIfTI, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_ext.data import btcv
from monai_ext.data.common import DataError
from monai_ext.data.synthetic import btcv as synth_btcv

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("btcv_raw")
    synth_btcv.synthesize(root, cases=4, seed=3)
    return root


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_synthetic_layout_and_anatomy(raw):
    # canonical ids: 3 training ids and 1 validation id for 4 cases, one unlabelled test case
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [
        "img0001.nii.gz",
        "img0002.nii.gz",
        "img0003.nii.gz",
        "img0035.nii.gz",
    ]
    assert min(p.name for p in (raw / "labelsTr").iterdir()) == "label0001.nii.gz"
    assert [p.name for p in (raw / "imagesTs").iterdir()] == ["img0061.nii.gz"]
    hu, aff = _read(raw / "imagesTr" / "img0001.nii.gz")
    lab, aff_l = _read(raw / "labelsTr" / "label0001.nii.gz")
    assert hu.dtype == np.int16 and lab.dtype == np.uint8 and hu.shape == lab.shape == (64, 64, 24)
    assert np.allclose(aff, aff_l)
    assert nib.aff2axcodes(aff) == ("L", "P", "S")  # stored like converted DICOM axial slices
    zooms = np.abs(np.diag(aff)[:3])
    assert 5.5 < zooms[0] < 6.6 and zooms[0] == pytest.approx(zooms[1]) and 9 < zooms[2] < 11
    assert hu.min() <= -990  # air outside the body
    present = set(np.unique(lab).tolist())
    assert present == set(range(14)), f"organs missing: {set(range(14)) - present}"
    mean = {k: hu[lab == k].mean() for k in range(1, 14)}
    assert 70 < mean[6] < 150 and 70 < mean[1] < 150  # liver, spleen (enhanced parenchyma)
    assert mean[8] > mean[6]  # enhanced aorta brighter than liver
    assert mean[4] < 50  # gallbladder: fluid
    # anatomy: liver on the patient's right (world x > 0 side relative to spleen), spleen left
    ijk = {k: np.argwhere(lab == k).mean(0) for k in (1, 6, 2, 3)}
    x = {k: (aff @ np.r_[v, 1])[0] for k, v in ijk.items()}
    assert x[6] > x[1] and x[2] > x[3]  # RAS world: +x is the patient's right


def test_synthesis_is_deterministic(raw, tmp_path):
    again = tmp_path / "again"
    synth_btcv.synthesize(again, cases=1, seed=3)
    a, aff_a = _read(raw / "imagesTr" / "img0001.nii.gz")
    b, aff_b = _read(again / "imagesTr" / "img0001.nii.gz")
    assert np.array_equal(a, b) and np.array_equal(aff_a, aff_b)
    other = tmp_path / "other"
    synth_btcv.synthesize(other, cases=1, seed=4)
    assert not np.array_equal(a, _read(other / "imagesTr" / "img0001.nii.gz")[0])


def test_prepare_and_batch(raw, tmp_path):
    from monai.data import DataLoader, Dataset, load_decathlon_datalist
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        SpatialPadd,
    )

    out = tmp_path / "prep"
    dl = btcv.prepare(raw, out, size=(32, 32, -1))
    assert [e["case"] for e in dl["training"]] == ["0001", "0002", "0003"]
    assert [e["case"] for e in dl["validation"]] == ["0035"]
    assert [e["case"] for e in dl["test"]] == ["0061"] and "label" not in dl["test"][0]
    assert json.loads((out / "skipped.json").read_text()) == []
    meta = json.loads((out / "datalist.json").read_text())
    assert meta["labels"]["6"] == "liver" and meta["settings"]["size"] == [32, 32, -1]

    img, aff = _read(out / "imagesTr" / "img0001.nii.gz")
    lab, _ = _read(out / "labelsTr" / "label0001.nii.gz")
    assert img.shape == lab.shape == (32, 32, 24) and img.dtype == np.int16 and lab.dtype == np.uint8
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    # the resized volume covers the same field of view: its centre stays in place (world mm)
    raw_img = nib.load(str(raw / "imagesTr" / "img0001.nii.gz"))
    def centre(a, shape):
        return a @ np.r_[(np.asarray(shape) - 1) / 2, 1]

    assert np.allclose(centre(aff, img.shape), centre(raw_img.affine, raw_img.shape), atol=1e-3)
    assert np.allclose(np.abs(np.diag(aff)[:2]), np.abs(np.diag(raw_img.affine)[:2]) * 2, rtol=1e-5)
    assert set(np.unique(lab)) <= set(range(14)) and {6, 8} <= set(np.unique(lab))

    files = load_decathlon_datalist(str(out / "datalist.json"), True, "training", base_dir=str(out))
    keys = ["image", "label"]
    transforms = Compose(
        [
            LoadImaged(keys=keys),
            EnsureChannelFirstd(keys=keys),
            Orientationd(keys=keys, axcodes="RAS"),
            ScaleIntensityRanged(keys="image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
            SpatialPadd(keys=keys, spatial_size=(32, 32, 32)),
        ]
    )
    batch = next(iter(DataLoader(Dataset(files, transforms), batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 1, 32, 32, 32) and tuple(batch["label"].shape) == (2, 1, 32, 32, 32)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert set(batch["label"].unique().int().tolist()) <= set(range(14))


def test_prepare_as_is_matches_nibabel_canonical(raw, tmp_path):
    out = tmp_path / "asis"
    btcv.prepare(raw, out, size=(-1, -1, -1))
    for sub, name in (("imagesTr", "img0002.nii.gz"), ("labelsTr", "label0002.nii.gz")):
        ref = nib.as_closest_canonical(nib.load(str(raw / sub / name)))
        got = nib.load(str(out / sub / name))
        assert np.array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj))
        assert np.allclose(got.affine, ref.affine, atol=1e-4)


def test_idempotent_and_settings_guard(raw, tmp_path):
    out = tmp_path / "idem"
    btcv.prepare(raw, out, size=(16, 16, -1))
    target = out / "imagesTr" / "img0001.nii.gz"
    stamp = target.stat().st_mtime_ns
    first = (out / "datalist.json").read_text()
    btcv.prepare(raw, out, size=(16, 16, -1))
    assert target.stat().st_mtime_ns == stamp and (out / "datalist.json").read_text() == first
    with pytest.raises(ValueError, match="other settings"):
        btcv.prepare(raw, out, size=(24, 24, -1))
    btcv.prepare(raw, out, size=(24, 24, -1), overwrite=True)
    assert target.stat().st_mtime_ns != stamp and _read(target)[0].shape == (24, 24, 24)


def test_dataset_json_split(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw, src)
    spec = {
        "training": [{"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"}],
        "validation": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}],
        "test": ["imagesTs/img0061.nii.gz"],
    }
    (src / "dataset_0.json").write_text(json.dumps(spec))
    dl = btcv.prepare(src, tmp_path / "out", size=(16, 16, -1))
    assert [e["case"] for e in dl["training"]] == ["0002"]
    assert [e["case"] for e in dl["validation"]] == ["0001"]
    assert [e["case"] for e in dl["test"]] == ["0061"]
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert sorted(s["case"] for s in skipped) == ["0003", "0035"]  # present but not listed: reported
    assert all("not listed in dataset_0.json" in s["reason"] for s in skipped)


def test_non_canonical_ids_split_deterministically(raw, tmp_path):
    ids, test_ids = synth_btcv.synthetic_case_ids(36)
    assert ids[:24] == list(btcv.TRAIN_IDS) and ids[24:30] == list(btcv.VAL_IDS) and ids[30:] == list(range(41, 47))
    assert test_ids == list(range(61, 67))
    src = tmp_path / "ids"
    shutil.copytree(raw, src)
    for i in range(41, 46):  # ids that real BTCV does not have
        shutil.copy(raw / "imagesTr" / "img0001.nii.gz", src / "imagesTr" / f"img{i:04d}.nii.gz")
        shutil.copy(raw / "labelsTr" / "label0001.nii.gz", src / "labelsTr" / f"label{i:04d}.nii.gz")
    split = {c.case: c.split for c in btcv.discover(src, seed=0)}
    assert split["0001"] == "training" and split["0035"] == "validation" and split["0061"] == "test"
    extra = [split[f"{i:04d}"] for i in range(41, 46)]
    assert sorted(extra) == ["training"] * 4 + ["validation"]  # 24:6 of 5
    assert {c.case: c.split for c in btcv.discover(src, seed=0)} == split  # deterministic


def test_real_nifti_through_reader(tmp_path):
    """nibabel's anatomical.nii (a real MR volume, stored L-A-S, int16) through the same path."""
    ref = nib.load(str(ANATOMICAL))
    vol = btcv.read_volume(ANATOMICAL)
    assert tuple(vol.shape) == (1, 33, 41, 25)
    assert np.array_equal(np.asarray(vol[0]), ref.get_fdata().astype(np.float32))
    assert np.allclose(np.asarray(vol.affine), ref.affine)

    src = tmp_path / "raw"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    shutil.copy(ANATOMICAL, src / "imagesTr" / "img0001.nii")  # uncompressed .nii is accepted too
    data = np.asarray(ref.dataobj)
    label = np.digitize(data, np.percentile(data, [60, 85])).astype(np.uint8)  # values 0, 1, 2
    nib.save(nib.Nifti1Image(label, ref.affine), str(src / "labelsTr" / "label0001.nii.gz"))

    out = tmp_path / "out"
    dl = btcv.prepare(src, out, size=(-1, -1, -1))
    assert [e["case"] for e in dl["training"]] == ["0001"]
    got = nib.load(str(out / "imagesTr" / "img0001.nii.gz"))
    canon = nib.as_closest_canonical(ref)
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(canon.dataobj))
    assert np.allclose(got.affine, canon.affine)
    lab = nib.load(str(out / "labelsTr" / "label0001.nii.gz"))
    assert np.array_equal(
        np.asarray(lab.dataobj), np.asarray(nib.as_closest_canonical(nib.Nifti1Image(label, ref.affine)).dataobj)
    )

    out2 = tmp_path / "out2"
    btcv.prepare(src, out2, size=(16, 20, -1))
    small = nib.load(str(out2 / "imagesTr" / "img0001.nii.gz"))
    assert small.shape == (16, 20, 25) and nib.aff2axcodes(small.affine) == ("R", "A", "S")


def test_bad_inputs_are_skipped_with_reasons(raw, tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(raw, src)
    lab2, aff2 = _read(src / "labelsTr" / "label0002.nii.gz")
    nib.save(nib.Nifti1Image(lab2[:, :, :-2], aff2), str(src / "labelsTr" / "label0002.nii.gz"))  # shape mismatch
    lab3, aff3 = _read(src / "labelsTr" / "label0003.nii.gz")
    lab3 = lab3.copy()
    lab3[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(lab3, aff3), str(src / "labelsTr" / "label0003.nii.gz"))  # value outside 0..13
    blob = (src / "imagesTr" / "img0035.nii.gz").read_bytes()
    (src / "imagesTr" / "img0035.nii.gz").write_bytes(blob[: len(blob) // 3])  # truncated gzip
    (src / "imagesTr" / "img0099.nii.gz").write_bytes(gzip.compress(b""))  # empty, and no label
    out = tmp_path / "out"
    dl = btcv.prepare(src, out, size=(16, 16, -1))
    assert [e["case"] for e in dl["training"]] == ["0001"] and dl["validation"] == []
    skipped = {s["case"]: s for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == {"0002", "0003", "0035", "0099"}
    assert "label shape (64, 64, 22) differs from image shape (64, 64, 24)" in skipped["0002"]["reason"]
    assert skipped["0002"]["file"].endswith("label0002.nii.gz")
    assert "outside the integers 0..13: 20" in skipped["0003"]["reason"]
    assert skipped["0035"]["file"].endswith("img0035.nii.gz") and "cannot read NIfTI" in skipped["0035"]["reason"]
    assert "no label file" in skipped["0099"]["reason"]


def test_affine_mismatch_is_reported(raw, tmp_path):
    image = btcv.read_volume(raw / "imagesTr" / "img0001.nii.gz")
    label = btcv.read_volume(raw / "labelsTr" / "label0001.nii.gz", dtype=None)
    btcv.check_pair(image, label, Path("img.nii.gz"), Path("lab.nii.gz"), affine_tol=1e-2)
    label.affine[0, 3] += 2.0
    with pytest.raises(DataError, match=r"lab\.nii\.gz: label affine differs .* by 2"):
        btcv.check_pair(image, label, Path("img.nii.gz"), Path("lab.nii.gz"), affine_tol=1e-2)


def test_heldout_protocol_test_split_never_used_for_selection(raw, tmp_path):
    """--protocol heldout: a labelled test split disjoint from training and from validation (checkpoint
    selection); validation is the canonical one; the unlabelled CT move to 'unlabelled'. 24-6 stays as it was."""
    canon = {c.case: c.split for c in btcv.discover(raw, seed=0)}
    # 30 labelled cases in the canonical ids (a dataset_0.json-free folder: the split comes from the ids)
    src = tmp_path / "ids"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    (src / "imagesTs").mkdir()
    for i in btcv.TRAIN_IDS + btcv.VAL_IDS:
        (src / "imagesTr" / f"img{i:04d}.nii.gz").symlink_to(raw / "imagesTr" / "img0001.nii.gz")
        (src / "labelsTr" / f"label{i:04d}.nii.gz").symlink_to(raw / "labelsTr" / "label0001.nii.gz")
    (src / "imagesTs" / "img0061.nii.gz").symlink_to(raw / "imagesTs" / "img0061.nii.gz")
    split = {c.case: c.split for c in btcv.discover(src, seed=0, protocol="heldout")}
    by = {s: sorted(k for k, v in split.items() if v == s) for s in ("training", "validation", "test", "unlabelled")}
    assert len(by["training"]) == 18 and len(by["test"]) == 6 and by["unlabelled"] == ["0061"]
    assert by["validation"] == [f"{i:04d}" for i in btcv.VAL_IDS]  # selection split untouched
    assert set(by["test"]) <= {f"{i:04d}" for i in btcv.TRAIN_IDS}  # carved from training, never validation
    assert {c.case: c.split for c in btcv.discover(src, seed=0, protocol="heldout")} == split  # deterministic
    assert {c.case: c.split for c in btcv.discover(src, seed=1, protocol="heldout")} != split  # seeded
    default = {c.case: c.split for c in btcv.discover(src, seed=0)}
    assert sum(v == "training" for v in default.values()) == 24 and default["0061"] == "test"
    # the synthetic set through prepare (dataset_0.json): 3 training -> 2 training + 1 labelled test
    out = tmp_path / "heldout"
    dl = btcv.prepare(raw, out, size=(16, 16, -1), protocol="heldout")
    train, test = [e["case"] for e in dl["training"]], [e["case"] for e in dl["test"]]
    assert len(train) == 2 and len(test) == 1 and set(train + test) == {k for k, v in canon.items() if v == "training"}
    assert [e["case"] for e in dl["validation"]] == ["0035"] and "label" in dl["test"][0]
    assert [e["case"] for e in dl["unlabelled"]] == ["0061"] and "label" not in dl["unlabelled"][0]
    meta = json.loads((out / "datalist.json").read_text())
    assert meta["settings"]["protocol"] == "heldout" and meta["unlabelled"] == dl["unlabelled"]
    assert "protocol" not in json.loads(json.dumps(btcv.prepare(raw, tmp_path / "d", size=(16, 16, -1))))
    assert "protocol" not in json.loads((tmp_path / "d" / "datalist.json").read_text())["settings"]
    with pytest.raises(ValueError, match="protocol"):
        btcv.discover(raw, protocol="5-fold")
