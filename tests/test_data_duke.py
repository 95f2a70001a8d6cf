"""DUKE breast MRI: series selection, labels, synth -> prepare -> batch, laterality, bad input,
idempotency, determinism, and the DICOM series readers on a real file (pydicom's CT_small.dcm)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from monai_ext.data import duke
from monai_ext.data.common import DataError
from monai_ext.data.dicom import SeriesInfo, read_series
from monai_ext.data.synthetic import duke as synth_duke
from monai_ext.data.synthetic.dicom import ds_decimal, make_uid, new_dataset, set_pixels, write_dataset

# tiny but complete: 4x coarser than the paper's spacing, small box, resized once more
SMALL = {"spacing": (2.8, 2.8, 6.0), "size": (48, 48, 16), "out_size": (32, 32, 8)}


# ---------------------------------------------------------------------------------------------
# series selection and labels


@pytest.mark.parametrize(
    "description, phase",
    [
        ("ax dyn pre", 0),
        ("ax dyn 1st pass", 1),
        ("ax dyn 2nd pass", 2),
        ("Ph1/ax 3d dyn", 1),
        ("Ph3/Ax Vibrant MultiPhase", 3),
        ("ax 3d dyn", duke.PHASE_UNKNOWN),
        ("Ax Vibrant MultiPhase", duke.PHASE_UNKNOWN),
        ("t1_fl3d_tra_dynVIEWS_spair_ pre", 0),
        ("t1_fl3d_tra_dynVIEWS_spair 1st pass", 1),
        ("1st ax dyn", 1),
        ("ax t1", None),
        ("3 Plane Loc", None),
        ("ax t1 tse c", None),
        ("ax dyn sub", None),
        ("", None),
    ],
)
def test_dynamic_phase(description, phase):
    assert duke.dynamic_phase(description) == phase


def _info(desc: str, number: int, time: float | None = None) -> SeriesInfo:
    return SeriesInfo(
        path=Path(f"/x/{number}-{desc}"), files=[], description=desc, series_number=number, acquisition_time=time
    )


def test_select_dce_series():
    # named phases win over order
    pre, post = duke.select_dce_series(
        [_info("ax t1", 1), _info("ax dyn 1st pass", 3), _info("ax dyn pre", 4), _info("ax dyn 2nd pass", 5)]
    )
    assert (pre.description, post.description) == ("ax dyn pre", "ax dyn 1st pass")
    # GE: the unprefixed series is the pre-contrast phase of the Ph1/Ph2 ones
    pre, post = duke.select_dce_series([_info("Ph2/ax 3d dyn", 9), _info("ax 3d dyn", 7), _info("Ph1/ax 3d dyn", 8)])
    assert (pre.series_number, post.series_number) == (7, 8)
    # no phase in the names: acquisition time decides, not the series number
    s = [_info("ax dyn", 5, time=3600.0), _info("ax dyn", 3, time=3690.0), _info("ax dyn", 4, time=3780.0)]
    pre, post = duke.select_dce_series(s)
    assert (pre.series_number, post.series_number) == (5, 3)
    # the first post-contrast phase is missing: never take the second one instead
    with pytest.raises(DataError, match="no first post-contrast series"):
        duke.select_dce_series([_info("ax dyn pre", 3), _info("ax dyn 2nd pass", 5)], where="/raw/Breast_MRI_009")
    with pytest.raises(DataError, match="Breast_MRI_009.*no dynamic"):
        duke.select_dce_series([_info("ax t1", 1), _info("3 Plane Loc", 2)], where="/raw/Breast_MRI_009")


def test_side_labels():
    assert duke.side_labels("L", "0") == {"L": 1, "R": 0}
    assert duke.side_labels("R", "0") == {"L": 0, "R": 1}
    assert duke.side_labels("R", "1") == {"L": 1, "R": 1}
    with pytest.raises(duke.Excluded):
        duke.side_labels("L", "NC")
    with pytest.raises(ValueError, match="Tumor Location"):
        duke.side_labels("X", "0")


# ---------------------------------------------------------------------------------------------
# synthetic dataset end to end


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("duke_raw")
    synth_duke.synthesize(path, cases=5, seed=1)  # seed 1: four patients with known laterality, one NC
    return path


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("duke_out")
    return out, duke.prepare(raw, out, seed=0, **SMALL)


def test_synth_layout(raw):
    patients = sorted(p.name for p in raw.glob("Breast_MRI_*"))
    assert patients == [f"Breast_MRI_{i:03d}" for i in range(1, 6)]
    files = sorted(raw.glob("Breast_MRI_001/*/*/1-*.dcm"))
    assert files and all(f.name.startswith("1-") and len(f.stem) == 5 for f in files)
    import pydicom

    ds = pydicom.dcmread(files[0])
    for tag in (
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "PixelSpacing",
        "SliceThickness",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "RescaleSlope",
        "RescaleIntercept",
        "SeriesDescription",
    ):
        assert tag in ds, tag
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    table = duke.read_clinical(raw / duke.CLINICAL_NAME)
    assert sorted(table) == patients
    assert all(v["location"] in ("L", "R") and v["bilateral"] in ("0", "1", "NC") for v in table.values())


def test_prepare_and_batch(raw, prepared):
    out, datalist = prepared
    table = duke.read_clinical(raw / duke.CLINICAL_NAME)
    usable = sorted(p for p, v in table.items() if v["bilateral"] != "NC")
    assert len(usable) == 4 and len(table) == 5
    entries = [e for split in ("training", "validation", "test") for e in datalist[split]]
    assert sorted({e["patient"] for e in entries}) == usable
    assert len(entries) == 2 * len(usable)
    for e in entries:  # labels follow the table, independently of the implementation
        v = table[e["patient"]]
        assert e["label"] == int(v["bilateral"] == "1" or v["location"] == e["side"])
        assert e["image"] == f"images/{e['patient']}_{e['side']}.nii.gz"
    split_of = {}
    for split in ("training", "validation", "test"):
        for e in datalist[split]:
            assert split_of.setdefault(e["patient"], split) == split  # grouped by patient
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(s["case"] for s in skipped) == sorted(p for p, v in table.items() if v["bilateral"] == "NC")
    assert json.loads((out / "datalist.json").read_text())["settings"]["out_size"] == [32, 32, 8]

    import nibabel as nib

    img = nib.load(out / entries[0]["image"])
    assert img.shape == (32, 32, 8)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), [2.8 * 48 / 32, 2.8 * 48 / 32, 6.0 * 16 / 8], rtol=1e-4)

    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, ScaleIntensityd

    transforms = Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityd(keys="image"),
            EnsureTyped(keys=["image", "label"]),
        ]
    )
    data = [{**e, "image": str(out / e["image"])} for e in entries]
    batch = next(iter(DataLoader(Dataset(data, transforms), batch_size=2, num_workers=0)))
    assert tuple(batch["image"].shape) == (2, 1, 32, 32, 8)
    assert float(batch["image"].min()) == 0.0 and float(batch["image"].max()) == 1.0
    assert batch["label"].tolist() == [e["label"] for e in entries[:2]]


def test_idempotent_and_overwrite(raw, prepared, caplog):
    out, datalist = prepared
    files = sorted((out / "images").glob("*.nii.gz"))
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    with caplog.at_level("INFO"):
        again = duke.prepare(raw, out, seed=0, **SMALL)
    assert again == datalist
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before
    assert any("already prepared" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="other settings"):
        duke.prepare(raw, out, seed=0, **{**SMALL, "out_size": (16, 16, 8)})
    victim = files[0]
    duke.prepare(raw, out, seed=0, overwrite=True, **SMALL)
    assert victim.stat().st_mtime_ns != before[victim][0]
    assert victim.read_bytes() == before[victim][1]  # same input, same bytes


def test_synth_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth_duke.synthesize(a, cases=1, seed=7)
    synth_duke.synthesize(b, cases=1, seed=7)
    synth_duke.synthesize(c, cases=1, seed=8)

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.dcm"))
        }

    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    assert duke.read_clinical(a / duke.CLINICAL_NAME) == duke.read_clinical(b / duke.CLINICAL_NAME)
    # the clinical table is reproducible too: openpyxl stamps the save time into the zip entries and
    # dcterms:modified, which the generator fixes (previously two runs gave different bytes)
    with zipfile.ZipFile(a / duke.CLINICAL_NAME) as z:
        assert {i.date_time for i in z.infolist()} == {(2021, 1, 1, 0, 0, 0)}
        assert b"<dcterms:modified" in z.read("docProps/core.xml")
        assert b">2021-01-01T00:00:00Z</dcterms:modified>" in z.read("docProps/core.xml")
    assert (a / duke.CLINICAL_NAME).read_bytes() == (b / duke.CLINICAL_NAME).read_bytes()


def test_bad_input_skipped(raw, tmp_path):
    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    table = duke.read_clinical(bad / duke.CLINICAL_NAME)
    usable = sorted(p for p, v in table.items() if v["bilateral"] != "NC")
    assert len(usable) >= 3
    truncated_patient, no_post_patient, good = usable[0], usable[1], usable[2:]
    # a truncated slice (pixel data cut short) in the pre-contrast series
    victim = sorted(_dynamic_dirs(bad / truncated_patient)[0].glob("*.dcm"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 2000])
    # every dynamic series after the pre-contrast one removed
    for d in _dynamic_dirs(bad / no_post_patient)[1:]:
        shutil.rmtree(d)
    # a folder without a table row
    shutil.copytree(bad / good[0], bad / "Breast_MRI_999")

    out = tmp_path / "out"
    datalist = duke.prepare(bad, out, **SMALL)
    done = {e["patient"] for s in datalist.values() for e in s}
    assert done == set(good)  # the others went on
    skipped = {s["case"]: s for s in json.loads((out / "skipped.json").read_text())}
    assert str(victim) in skipped[truncated_patient]["reason"] and skipped[truncated_patient]["file"] == str(victim)
    assert "truncated" in skipped[truncated_patient]["reason"]
    assert "no first post-contrast series" in skipped[no_post_patient]["reason"]
    assert no_post_patient in skipped[no_post_patient]["file"]
    assert "no row for patient Breast_MRI_999" in skipped["Breast_MRI_999"]["reason"]


def _dynamic_dirs(patient_dir: Path) -> list[Path]:
    """The patient's dynamic series folders in acquisition (series number) order."""
    import pydicom

    def desc(d: Path) -> str:
        return str(pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True).SeriesDescription)

    dirs = [d for d in patient_dir.glob("*/*") if duke.dynamic_phase(desc(d)) is not None]
    return sorted(dirs, key=lambda d: int(d.name.split(".")[0]))


# ---------------------------------------------------------------------------------------------
# geometry: laterality, readers


def _write_series(folder: Path, volume_zyx: np.ndarray, desc: str, number: int, spacing=(3.0, 3.0, 4.0), reverse=False):
    """Axial series, LPS: column index -> +x (patient's left), row index -> +y (posterior)."""
    nz, ny, nx = volume_zyx.shape
    origin = (-(nx - 1) / 2 * spacing[0], -(ny - 1) / 2 * spacing[1])
    for k in range(nz):
        uid = make_uid("t", desc, k)
        ds = new_dataset(
            synth_duke.MR_IMAGE_STORAGE,
            uid,
            Modality="MR",
            SeriesDescription=desc,
            SeriesNumber=number,
            StudyInstanceUID=make_uid("t", "study"),
            SeriesInstanceUID=make_uid("t", desc),
            InstanceNumber=(nz - k) if reverse else (k + 1),
            PixelSpacing=ds_decimal([spacing[1], spacing[0]]),
            SliceThickness=ds_decimal(spacing[2]),
            ImageOrientationPatient=["1", "0", "0", "0", "1", "0"],
            ImagePositionPatient=ds_decimal([origin[0], origin[1], k * spacing[2]]),
            RescaleSlope="2",
            RescaleIntercept="0",
        )
        set_pixels(ds, volume_zyx[k].astype(np.uint16))
        write_dataset(folder / f"1-{k + 1:03d}.dcm", ds)


def test_laterality_and_orientation(tmp_path):
    """An enhancing blob at positive LPS x (the patient's left) and anterior (negative LPS y)
    must land in the left breast crop, in its anterior half."""
    nz, ny, nx = 12, 40, 60
    pre = np.full((nz, ny, nx), 100, np.uint16)
    post = pre.copy()
    post[4:8, 8:14, 44:50] = 400  # columns 44-49: +x, the patient's left; rows 8-13: anterior
    _write_series(tmp_path / "pre", pre, "ax dyn pre", 3)
    _write_series(tmp_path / "post", post, "ax dyn 1st pass", 4, reverse=True)
    proc = duke.DukeSubtractionPreprocess(spacing=(3.0, 3.0, 4.0), size=(30, 40, 12), out_size=None, ap_crop="center")
    halves = proc(read_series(tmp_path / "pre"), read_series(tmp_path / "post"))
    left, right = halves["L"][0].numpy(), halves["R"][0].numpy()
    assert left.shape == right.shape == (30, 40, 12)
    assert np.abs(right).max() < 1e-3
    # expected RAS indices worked out by hand from the LPS positions (box centred on the image):
    # x: columns 44-49 -> LPS x 43.5..58.5 mm -> RAS x -58.5..-43.5 -> (x + 88.5) / 3 = 10..15
    # y: rows 8-13 -> LPS y -34.5..-19.5 (anterior) -> RAS y 19.5..34.5 -> (y + 58.5) / 3 = 26..31
    # z: slices 4-7 -> z 16..28 mm, box from 0 mm -> 4..7
    xs, ys, zs = np.nonzero(left > 300)
    assert sorted(set(xs.tolist())) == list(range(10, 16))
    assert sorted(set(ys.tolist())) == list(range(26, 32))
    assert sorted(set(zs.tolist())) == list(range(4, 8))
    np.testing.assert_allclose(left[10:16, 26:32, 4:8], 600, rtol=1e-4)  # (400 - 100) * RescaleSlope 2


def test_dicom_readers_on_real_ct(tmp_path):
    """pydicom's CT_small.dcm through both MONAI readers, against pydicom's own decoding."""
    import pydicom  # core dependency

    src = pydicom.data.get_testdata_file("CT_small.dcm")
    (tmp_path / "ct").mkdir()
    shutil.copy(src, tmp_path / "ct" / "CT_small.dcm")
    ds = pydicom.dcmread(src)
    ref = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for reader in ("pydicom", "itk"):
        img = read_series(tmp_path / "ct", reader=reader)
        assert tuple(img.shape) == (128, 128, 1), reader
        np.testing.assert_allclose(img[..., 0].numpy(), ref.T, err_msg=reader)  # (x, y) = (column, row)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        np.testing.assert_allclose(img.affine[:3, 3].numpy(), [-ipp[0], -ipp[1], ipp[2]], atol=1e-3)  # LPS -> RAS
        np.testing.assert_allclose(
            np.abs(np.diag(img.affine.numpy())[:2]), [float(v) for v in ds.PixelSpacing], rtol=1e-5
        )


def test_slice_order_and_gaps(tmp_path):
    """Instance numbers that do not follow the position (read via ITK) give the same volume;
    a missing slice is an error, not a volume with a wrong spacing."""
    vol = (np.arange(6)[:, None, None] * 100 + np.arange(8)[None, None, :] + np.zeros((6, 5, 8))).astype(np.uint16)
    _write_series(tmp_path / "ok", vol, "ax dyn pre", 1)
    _write_series(tmp_path / "shuffled", vol, "ax dyn pre", 1)
    import pydicom

    files = sorted((tmp_path / "shuffled").glob("*.dcm"))
    for f, number in zip(files, [3, 1, 6, 2, 5, 4]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = number
        ds.save_as(f)
    ref, got = read_series(tmp_path / "ok"), read_series(tmp_path / "shuffled")
    np.testing.assert_allclose(got.numpy(), ref.numpy())
    np.testing.assert_allclose(got.affine.numpy(), ref.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(ref[0, 0, :].numpy(), np.arange(6) * 200)  # z follows position; slope 2
    (tmp_path / "ok" / "1-004.dcm").unlink()
    with pytest.raises(DataError, match="not evenly spaced"):
        read_series(tmp_path / "ok")


def test_truncated_file_named(tmp_path):
    vol = np.full((5, 8, 8), 10, np.uint16)
    _write_series(tmp_path / "s", vol, "ax dyn pre", 1)
    victim = tmp_path / "s" / "1-003.dcm"
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(DataError) as err:
        read_series(tmp_path / "s")
    assert err.value.path == str(victim)
