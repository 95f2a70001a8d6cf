"""VinDr-CXR: labels and consensus, DICOM display pipeline (MONOCHROME1/2, modality and VOI LUT),
synth -> prepare -> batch, the real radiograph RG1_UNCI.dcm, bad input, idempotency, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from monai_ext.data import vindr_cxr as vindr
from monai_ext.data.common import DataError
from monai_ext.data.dicom import read_radiograph
from monai_ext.data.synthetic import vindr_cxr as synth_vindr
from monai_ext.data.synthetic.dicom import make_uid, new_dataset, set_pixels, write_dataset

RES = [32, 48]


def _rg1_path() -> Path:
    """pydicom-data's real chest radiograph (MONOCHROME1); never downloads."""
    import importlib.metadata as md

    try:
        for f in md.files("pydicom-data") or []:
            if f.name == "RG1_UNCI.dcm":
                return Path(f.locate())
    except md.PackageNotFoundError:
        pass
    import pydicom.data

    try:
        path = pydicom.data.get_testdata_file("RG1_UNCI.dcm", download=False)
    except TypeError:  # pydicom 2.x has no download switch; do not risk a download
        path = None
    if not path:
        pytest.fail("pydicom-data (test extra) is not installed: run scripts/setup.sh test")
    return Path(path)


def _write_labels(path: Path, rows: list[dict], readers: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["image_id", "rad_id", *vindr.FINDINGS] if readers else ["image_id", *vindr.FINDINGS]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval=0)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------
# labels


def test_consensus():
    assert vindr.consensus([1, 1, 0]) == 1
    assert vindr.consensus([1, 0, 0]) == 0
    assert vindr.consensus([1, 0, 0], "any") == 1
    assert vindr.consensus([0, 0, 0], "any") == 0
    assert vindr.consensus([1, 0]) == 0  # a tie is no majority
    with pytest.raises(ValueError):
        vindr.consensus([1], "vote")


def test_read_labels(tmp_path):
    a, b = "a" * 32, "b" * 32
    rows = [
        {"image_id": a, "rad_id": "R1", "Cardiomegaly": 1},
        {"image_id": a, "rad_id": "R2", "Cardiomegaly": 1},
        {"image_id": a, "rad_id": "R3", "Cardiomegaly": 0},
        {"image_id": b, "rad_id": "R1", "Cardiomegaly": 0},
        {"image_id": b, "rad_id": "R4", "Cardiomegaly": 1},
        {"image_id": b, "rad_id": "R9", "Cardiomegaly": 0},
        {"image_id": "c" * 32, "rad_id": "R9", "Cardiomegaly": "x"},
    ]
    _write_labels(tmp_path / "l.csv", rows)
    labels, problems = vindr.read_labels(tmp_path / "l.csv")
    assert labels == {a: {"label": 1, "votes": 2, "readers": 3}, b: {"label": 0, "votes": 1, "readers": 3}}
    assert len(problems) == 1 and "row 8" in str(problems[0]) and "l.csv" in str(problems[0])
    labels, _ = vindr.read_labels(tmp_path / "l.csv", rule="any")
    assert labels[b]["label"] == 1
    with pytest.raises(DataError, match="Tuberculosis2"):
        vindr.read_labels(tmp_path / "l.csv", finding="Tuberculosis2")


# ---------------------------------------------------------------------------------------------
# DICOM display pipeline


def test_radiograph_photometric_and_luts(tmp_path):
    """The same picture stored as MONOCHROME2 and as MONOCHROME1 with a different modality
    rescale and a VOI window over the full range reads back identically, not inverted."""
    rng = np.random.default_rng(0)
    picture = np.clip(np.linspace(0, 1, 40)[None, :] + 0.1 * rng.standard_normal((30, 40)), 0, 1)  # bright right
    stored2 = np.round(100 + picture * 3000).astype(np.uint16)
    stored1 = (4095 - stored2).astype(np.uint16)
    for name, stored, photometric, slope, intercept in (
        ("m2", stored2, "MONOCHROME2", 1.0, 0.0),
        ("m1", stored1, "MONOCHROME1", 2.0, -1024.0),
    ):
        lo, hi = stored.min() * slope + intercept, stored.max() * slope + intercept
        ds = new_dataset(
            synth_vindr.DX_STORAGE,
            make_uid("t", name),
            Modality="DX",
            RescaleSlope=str(slope),
            RescaleIntercept=str(intercept),
            WindowCenter=str((lo + hi) / 2),
            WindowWidth=str(hi - lo + 1),
        )
        set_pixels(ds, stored, bits_stored=12, photometric=photometric)
        write_dataset(tmp_path / f"{name}.dicom", ds)
    img2, meta2 = read_radiograph(tmp_path / "m2.dicom")
    img1, meta1 = read_radiograph(tmp_path / "m1.dicom")
    assert (meta1["photometric"], meta2["photometric"]) == ("MONOCHROME1", "MONOCHROME2")
    assert img1.shape == (30, 40) and img1.min() >= 0 and img1.max() <= 1
    ref = (picture - picture.min()) / (picture.max() - picture.min())
    np.testing.assert_allclose(img2, ref, atol=2e-3)
    np.testing.assert_allclose(img1, ref, atol=2e-3)
    # no VOI window stored: one hot pixel must not squeeze the picture (robust range)
    hot = stored2.copy()
    hot[0, 0] = 4095
    ds = new_dataset(synth_vindr.DX_STORAGE, make_uid("t", "hot"), Modality="DX")
    set_pixels(ds, hot, bits_stored=12, photometric="MONOCHROME2")
    write_dataset(tmp_path / "hot.dicom", ds)
    img, _ = read_radiograph(tmp_path / "hot.dicom")
    assert img[0, 0] == 1.0
    assert np.corrcoef(img[1:].ravel(), ref[1:].ravel())[0, 1] > 0.99
    assert abs(float(np.median(img)) - float(np.median(ref))) < 0.03  # min-max would give ~0.37


def test_real_radiograph_not_inverted(tmp_path):
    """RG1_UNCI.dcm (real PA chest film, MONOCHROME1) through the VinDr preparation path:
    spine/mediastinum must come out brighter than both lung fields."""
    src = _rg1_path()
    raw = tmp_path / "raw"
    image_id = "0123456789abcdef0123456789abcdef"
    (raw / "train").mkdir(parents=True)
    shutil.copy(src, raw / "train" / f"{image_id}.dicom")
    _write_labels(
        raw / vindr.TRAIN_CSV, [{"image_id": image_id, "rad_id": f"R{i}", "No finding": 1} for i in (1, 2, 3)]
    )
    out = tmp_path / "out"
    datalist = vindr.prepare(raw, out, resolutions=[64])
    entry = datalist["training"][0] if datalist["training"] else (datalist["validation"] + datalist["test"])[0]
    assert entry["label"] == 0 and entry["readers"] == 3
    from PIL import Image

    img = np.asarray(Image.open(out / entry["image_64"]), dtype=np.float32) / 255  # (H, W)
    assert img.shape == (64, 64)
    H, W = img.shape

    def region(v0, v1, u0, u1):
        return float(img[int(v0 * H) : int(v1 * H), int(u0 * W) : int(u1 * W)].mean())

    centre = region(0.25, 0.6, 0.45, 0.55)
    lung_right, lung_left = region(0.25, 0.5, 0.2, 0.3), region(0.25, 0.5, 0.7, 0.8)
    assert centre > lung_right + 0.15 and centre > lung_left + 0.15, (centre, lung_right, lung_left)
    # and against the stored values: MONOCHROME1 stores dense tissue as low values
    import pydicom

    raw_px = pydicom.dcmread(src).pixel_array.astype(np.float64)[::16, ::16]
    display, _ = read_radiograph(src)
    assert np.corrcoef(raw_px.ravel(), display[::16, ::16].ravel())[0, 1] < -0.99


# ---------------------------------------------------------------------------------------------
# synthetic dataset end to end


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vindr_raw")
    synth_vindr.synthesize(path, cases=24, seed=0)
    return path


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vindr_out")
    return out, vindr.prepare(raw, out, resolutions=RES)


def test_synth_layout(raw):
    import pandas as pd
    import pydicom

    train, test = sorted((raw / "train").glob("*.dicom")), sorted((raw / "test").glob("*.dicom"))
    assert len(train) == 20 and len(test) == 4
    assert all(vindr.IMAGE_ID.match(p.stem) for p in train + test)
    t = pd.read_csv(raw / vindr.TRAIN_CSV)
    assert list(t.columns) == ["image_id", "rad_id", *vindr.FINDINGS] and len(vindr.FINDINGS) == 28
    assert (t.groupby("image_id").size() == 3).all() and t["rad_id"].str.fullmatch(r"R([1-9]|1[0-7])").all()
    assert list(pd.read_csv(raw / vindr.TEST_CSV).columns) == ["image_id", *vindr.FINDINGS]
    photometric = {str(pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation) for p in train}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    ds = pydicom.dcmread(train[0], stop_before_pixels=True)
    for tag in (
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "RescaleSlope",
        "RescaleIntercept",
        "BitsStored",
    ):
        assert tag in ds, tag
    votes = t.groupby("image_id")["Cardiomegaly"].sum()
    assert ((votes > 0) & (votes < 3)).any(), "readers must disagree on some images"
    assert (votes >= 2).any() and (votes < 2).any()


def test_prepare_and_batch(raw, prepared):
    import pandas as pd

    out, datalist = prepared
    votes = pd.read_csv(raw / vindr.TRAIN_CSV).groupby("image_id")["Cardiomegaly"].agg(["sum", "count"])
    entries = [e for s in ("training", "validation", "test") for e in datalist[s]]
    assert sorted(e["image_id"] for e in entries) == sorted(votes.index)
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [12, 4, 4]  # 9000:3000:3000
    assert len(datalist["official_test"]) == 4
    for e in entries:
        assert e["label"] == int(votes.loc[e["image_id"], "sum"] >= 2)
        assert e["image"] == e["image_32"] == f"images_32/{e['image_id']}.png"
        assert (out / e["image_48"]).is_file()
    per_res = json.loads((out / "datalist_48.json").read_text())
    assert per_res["training"][0]["image"] == per_res["training"][0]["image_48"]

    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, RepeatChanneld, ScaleIntensityd

    transforms = Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityd(keys="image"),
            RepeatChanneld(keys="image", repeats=3),
            EnsureTyped(keys=["image", "label"]),
        ]
    )
    data = [{**e, "image": str(out / e["image"])} for e in per_res["training"]]
    batch = next(iter(DataLoader(Dataset(data, transforms), batch_size=4, num_workers=0)))
    assert tuple(batch["image"].shape) == (4, 3, 48, 48)
    assert batch["label"].tolist() == [e["label"] for e in per_res["training"][:4]]


def test_consensus_any_and_official_split(raw, prepared, tmp_path):
    import pandas as pd

    out, _ = prepared
    votes = pd.read_csv(raw / vindr.TRAIN_CSV).groupby("image_id")["Cardiomegaly"].sum()
    test_rows = pd.read_csv(raw / vindr.TEST_CSV).set_index("image_id")["Cardiomegaly"]
    # re-using the cached images: the label rule and split do not touch them
    datalist = vindr.prepare(raw, out, resolutions=RES, consensus="any", split="official")
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [15, 5, 4]
    for e in datalist["training"] + datalist["validation"]:
        assert e["label"] == int(votes[e["image_id"]] > 0)
    for e in datalist["test"]:
        assert e["label"] == int(test_rows[e["image_id"]])


def test_formats_agree(raw, tmp_path):
    """png, png16 and nifti caches load (MONAI LoadImage) as the same array."""
    from monai.transforms import LoadImage

    one = tmp_path / "one"
    (one / "annotations").mkdir(parents=True)
    (one / "train").mkdir()
    src = min((raw / "train").glob("*.dicom"))
    shutil.copy(src, one / "train" / src.name)
    _write_labels(one / vindr.TRAIN_CSV, [{"image_id": src.stem, "rad_id": "R1"}])
    arrays = {}
    for fmt in ("png", "png16", "nifti"):
        vindr.prepare(one, tmp_path / fmt, resolutions=[40], format=fmt)
        path = next((tmp_path / fmt / "images_40").iterdir())
        arrays[fmt] = np.asarray(LoadImage(image_only=True)(str(path)), dtype=np.float64)
    ref = arrays["nifti"]
    assert ref.shape == (40, 40)
    np.testing.assert_allclose(arrays["png"] / 255, ref, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(arrays["png16"] / 65535, ref, atol=0.5 / 65535 + 1e-6)


def test_idempotent(raw, prepared, caplog):
    out, _ = prepared
    files = sorted(out.glob("images_*/*.png"))
    before = {f: f.stat().st_mtime_ns for f in files}
    with caplog.at_level("INFO"):
        vindr.prepare(raw, out, resolutions=RES)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert any("already prepared" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="other settings"):
        vindr.prepare(raw, out, resolutions=RES, format="png16")


def test_synth_deterministic(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    synth_vindr.synthesize(tmp_path / "a", cases=3, seed=5)
    synth_vindr.synthesize(tmp_path / "b", cases=3, seed=5)
    synth_vindr.synthesize(tmp_path / "c", cases=3, seed=6)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert set(digest(tmp_path / "a").values()).isdisjoint(
        v for k, v in digest(tmp_path / "c").items() if k.endswith(".dicom")
    )


def test_bad_input_skipped(raw, tmp_path):
    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    train = sorted((bad / "train").glob("*.dicom"))
    truncated, orphan = train[0], train[1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing_id = "f" * 32  # a CSV row whose image file does not exist
    with open(bad / vindr.TRAIN_CSV, "a", newline="") as fh:
        csv.writer(fh).writerow([missing_id, "R1"] + [0] * 28)
    import pandas as pd

    t = pd.read_csv(bad / vindr.TRAIN_CSV)
    t[t["image_id"] != orphan.stem].to_csv(bad / vindr.TRAIN_CSV, index=False)  # an image without CSV row

    out = tmp_path / "out"
    datalist = vindr.prepare(bad, out, resolutions=[32])
    done = {e["image_id"] for s in ("training", "validation", "test") for e in datalist[s]}
    assert done == {p.stem for p in train[2:]}  # the others went on
    skipped = {s["case"]: s for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == {truncated.stem, orphan.stem, missing_id}
    assert skipped[truncated.stem]["file"] == str(truncated) and "truncated" in skipped[truncated.stem]["reason"]
    assert skipped[missing_id]["file"] == str(bad / "train" / f"{missing_id}.dicom")
    assert "file is missing" in skipped[missing_id]["reason"]
    assert skipped[orphan.stem]["file"] == str(orphan) and "no row" in skipped[orphan.stem]["reason"]
