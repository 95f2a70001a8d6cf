"""AIROGS and ISIC 2020: real JPEGs (scikit-image's chelsea / astronaut) through the readers, bad inputs named in
skipped.json, the patient-grouped ISIC split, the synthetic layouts, the class-imbalance options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ext.data import airogs, isic
from monai_ext.data.common import DataError
from monai_ext.data.dataset import prepare_checked
from monai_ext.data.jpeg import read_rgb
from monai_ext.data.synthetic import airogs as synth_airogs
from monai_ext.data.synthetic import isic as synth_isic
from monai_ext.workflows import imbalance


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()  # (H, W, 3) uint8: chelsea 300 x 451, astronaut 512 x 512


def _jpeg(path: Path, array: np.ndarray, truncate: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)
    if truncate:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _expected(array: np.ndarray, size: int, square: str) -> np.ndarray:
    """What preparation should give, computed with Pillow alone: (size, size, 3) floats in [0, 1]."""
    h, w = array.shape[:2]
    img = Image.fromarray(array)
    if square == "pad":
        s = max(h, w)
        canvas = Image.new("RGB", (s, s))
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    else:
        s = min(h, w)
        canvas = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


def _skips(out: Path) -> dict[str, str]:
    return {e["case"]: e["reason"] for e in json.loads((out / "skipped.json").read_text())}


def test_read_rgb_is_monai_layout_of_the_jpeg(tmp_path):
    path = _jpeg(tmp_path / "chelsea.jpg", _photo("chelsea"))
    arr = read_rgb(path)
    decoded = np.asarray(Image.open(path), dtype=np.float32) / 255  # (H, W, 3)
    assert arr.shape == (3, 451, 300)  # MONAI's PILReader: (C, W, H)
    np.testing.assert_allclose(arr, decoded.transpose(2, 1, 0), atol=1e-6)


def test_airogs_real_jpegs_and_bad_inputs(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    _jpeg(raw / "0" / "TRAIN000000.jpg", _photo("chelsea"))
    _jpeg(raw / "1" / "TRAIN000001.jpg", _photo("astronaut"))
    _jpeg(raw / "1" / "TRAIN000002.jpg", _photo("astronaut"), truncate=True)
    _jpeg(raw / "2" / "TRAIN000003.jpg", _photo("chelsea"))  # class "maybe"
    _jpeg(raw / "2" / "TRAIN000005.jpg", _photo("chelsea"))  # no CSV row
    (raw / "train_labels.csv").write_text("challenge_id,class\nTRAIN000000,RG\nTRAIN000001,NRG\nTRAIN000002,RG\n"
                                          "TRAIN000003,maybe\nTRAIN000004,NRG\n")
    datalist = airogs.prepare(raw, out, resolutions=[32], fov_crop=False)
    entries = {e["challenge_id"]: e for split in datalist.values() for e in split}
    assert set(entries) == {"TRAIN000000", "TRAIN000001"}
    assert entries["TRAIN000000"]["label"] == 1 and entries["TRAIN000001"]["label"] == 0
    for cid, name in (("TRAIN000000", "chelsea"), ("TRAIN000001", "astronaut")):
        got = _png(out / entries[cid]["image_32"])
        assert np.abs(got - _expected(_photo(name), 32, "pad")).mean() < 0.02, cid  # orientation, channels, padding
    skips = _skips(out)
    truncated = skips["TRAIN000002"]
    assert "TRAIN000002.jpg" in truncated and "truncated" in truncated
    assert any("class 'maybe' of TRAIN000003" in r and "train_labels.csv" in r for r in skips.values())
    assert "listed in train_labels.csv but no image file" in skips["TRAIN000004"]
    assert "TRAIN000005.jpg: image has no valid row" in skips["TRAIN000005"]
    assert "TRAIN000003.jpg: image has no valid row" in skips["TRAIN000003"]
    assert len(skips) == 5  # nothing else, nothing silently dropped: 7 ids = 2 prepared + 5 skipped
    # the field-of-view crop takes a black surround away
    fov = tmp_path / "fov"
    padded = np.zeros((400, 600, 3), np.uint8)
    padded[72:328, 172:428] = _photo("astronaut")[::2, ::2]
    _jpeg(fov / "0" / "TRAIN000000.jpg", padded)
    (fov / "train_labels.csv").write_text("challenge_id,class\nTRAIN000000,RG\n")
    airogs.prepare(fov, tmp_path / "fov_out", resolutions=[16])
    png = _png(tmp_path / "fov_out" / "images_16" / "TRAIN000000.png")
    assert png[:, 0].mean() > 0.1 and png[:, -1].mean() > 0.1  # no black columns left and right


def test_isic_real_jpegs_and_bad_inputs(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    header = ",".join(isic.COLUMNS)
    rows = [
        "ISIC_0000001,IP_0000001,male,45,torso,nevus,benign,0",
        "ISIC_0000002,IP_0000002,female,60,torso,melanoma,malignant,1",
        "ISIC_0000003,,female,60,torso,nevus,benign,0",  # missing patient id
        "ISIC_0000004,IP_0000002,female,60,torso,nevus,benign,2",  # unknown target
        "ISIC_0000005,IP_0000002,female,60,torso,nevus,benign,1",  # target contradicts benign_malignant
        "ISIC_0000006,IP_0000003,male,30,torso,nevus,benign,0",  # file missing
        "ISIC_0000007,IP_0000003,male,30,torso,nevus,benign,0",  # truncated JPEG
    ]
    (raw).mkdir()
    (raw / isic.LABELS_CSV).write_text("\n".join([header, *rows]) + "\n")
    _jpeg(raw / "train" / "ISIC_0000001.jpg", _photo("chelsea"))
    _jpeg(raw / "train" / "ISIC_0000002.jpg", _photo("astronaut"))
    for i in (3, 4, 5, 8):
        _jpeg(raw / "train" / f"ISIC_000000{i}.jpg", _photo("chelsea"))
    _jpeg(raw / "train" / "ISIC_0000007.jpg", _photo("chelsea"), truncate=True)
    datalist = isic.prepare(raw, out, resolutions=[32])
    entries = {e["image_name"]: e for split in datalist.values() for e in split}
    assert set(entries) == {"ISIC_0000001", "ISIC_0000002"}
    assert entries["ISIC_0000002"]["label"] == 1 and entries["ISIC_0000002"]["patient_id"] == "IP_0000002"
    assert entries["ISIC_0000001"]["anatom_site_general_challenge"] == "torso"
    got = _png(out / entries["ISIC_0000001"]["image_32"])
    assert np.abs(got - _expected(_photo("chelsea"), 32, "crop")).mean() < 0.02  # centre square crop
    skips = _skips(out)
    csv_reasons = " | ".join(r for k, r in skips.items() if k.startswith(isic.LABELS_CSV))
    assert "row 4 (ISIC_0000003): missing patient_id" in csv_reasons
    assert "row 5 (ISIC_0000004): target '2' is not 0 or 1" in csv_reasons
    assert "row 6 (ISIC_0000005): target 1 contradicts benign_malignant 'benign'" in csv_reasons
    assert "ISIC_0000006.jpg: listed in ISIC_2020_Training_GroundTruth.csv but the file is missing" in \
        skips["ISIC_0000006"]
    assert "ISIC_0000007.jpg" in skips["ISIC_0000007"] and "truncated" in skips["ISIC_0000007"]
    assert "no row in the CSV" in skips["ISIC_0000008"]
    assert "its row in the CSV is invalid" in skips["ISIC_0000003"]
    # every id accounted for: 8 images/rows = 2 prepared + 3 CSV rows + 3 invalid-row images + 3 more
    assert {"ISIC_0000003", "ISIC_0000004", "ISIC_0000005", "ISIC_0000006", "ISIC_0000007",
            "ISIC_0000008"} <= set(skips)


def test_isic_patient_split_on_synthetic_data(tmp_path):
    synth_isic.synthesize(tmp_path / "raw", cases=40, seed=1, malignant_fraction=0.3, images_per_patient=3)
    csv = (tmp_path / "raw" / isic.LABELS_CSV).read_text().splitlines()
    assert csv[0] == ",".join(isic.COLUMNS) and len(csv) == 41
    datalist = prepare_checked("isic", tmp_path / "raw", tmp_path / "prepared", resolutions=[16])
    patients = {s: {e["patient_id"] for e in datalist[s]} for s in ("training", "validation", "test")}
    assert not (patients["training"] & patients["validation"] or patients["training"] & patients["test"]
                or patients["validation"] & patients["test"])
    n = {s: len(v) for s, v in datalist.items()}
    want = np.array(isic.PAPER_SPLIT) / sum(isic.PAPER_SPLIT) * 40
    assert np.abs(np.array([n["training"], n["validation"], n["test"]]) - want).max() <= 4  # about a patient
    body = json.loads((tmp_path / "prepared" / "datalist_16.json").read_text())
    assert body["split_counts"]["test"]["patients"] == len(patients["test"])
    # the check itself refuses a patient in two splits
    bad = {"training": [{"patient_id": "IP_1"}], "test": [{"patient_id": "IP_1"}]}
    with pytest.raises(DataError, match="patient IP_1 has images in splits 'training' and 'test'"):
        isic.check_patient_disjoint(bad, "x.json")


def test_patient_split_spreads_positives_and_keeps_patients_together():
    rng = np.random.default_rng(0)
    patients = {f"im{i}": f"p{rng.integers(0, 60)}" for i in range(1000)}
    positive = {im: int(rng.random() < 0.05) for im in patients}
    assign = isic.patient_split(patients, positive, isic.PAPER_SPLIT, seed=3)
    by_patient: dict[str, set[str]] = {}
    for im, s in assign.items():
        by_patient.setdefault(patients[im], set()).add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    for split in ("training", "validation", "test"):
        assert sum(positive[im] for im, s in assign.items() if s == split) > 0, split


def test_airogs_synthetic_layout_and_split(tmp_path):
    synth_airogs.synthesize(tmp_path / "raw", cases=12, seed=2, rg_fraction=0.5)
    folders = sorted(p.name for p in (tmp_path / "raw").iterdir() if p.is_dir())
    assert folders == ["0", "1", "2", "3", "4", "5"]
    assert (tmp_path / "raw" / "0" / "TRAIN000000.jpg").is_file()
    datalist = prepare_checked("airogs", tmp_path / "raw", tmp_path / "prepared", resolutions=[16])
    n = [len(datalist[s]) for s in ("training", "validation", "test")]
    assert n == [8, 2, 2]  # 64,922 / 16,231 / 20,289 of 101,442, scaled to 12 (7.68 / 1.92 / 2.40)
    again = tmp_path / "again"
    synth_airogs.synthesize(again, cases=2, seed=2, rg_fraction=0.5)  # deterministic per (seed, index)
    assert (again / "1" / "TRAIN000001.jpg").read_bytes() == (tmp_path / "raw" / "0" / "TRAIN000001.jpg").read_bytes()


def test_synthetic_signal_follows_the_label():
    """The generators' latent variables: RG has the larger cup-to-disc ratio, malignant the larger score, with
    overlap (not a trivial task)."""
    cdr = [synth_airogs.draw_case(0, i, 0.5) for i in range(400)]
    rg = np.array([c[1] for c in cdr if c[0]])
    nrg = np.array([c[1] for c in cdr if not c[0]])
    assert rg.mean() > nrg.mean() + 0.15 and rg.min() < nrg.max()
    z = [synth_isic.draw_label(0, i, 0.5) for i in range(400)]
    mal = np.array([v for lab, v in z if lab])
    ben = np.array([v for lab, v in z if not lab])
    assert mal.mean() > ben.mean() + 0.3 and mal.min() < ben.max()


def test_imbalance_options():
    data = [{"label": 1}] * 10 + [{"label": 0}] * 90
    assert imbalance.loss_weights("none", data) is None and imbalance.balanced_sampler("loss", data) is None
    w = imbalance.loss_weights("loss", data)
    torch.testing.assert_close(w, torch.tensor([100 / 180, 100 / 20]))  # sklearn's "balanced"
    torch.manual_seed(0)
    drawn = [data[i]["label"] for i in imbalance.balanced_sampler("sampler", data)]
    assert len(drawn) == 100 and 35 <= sum(drawn) <= 65  # about half positives per epoch (10 % in the data)
    with pytest.raises(ValueError, match="cannot be combined with multi_gpu_train.yaml"):
        imbalance.check_ddp("sampler")
    imbalance.check_ddp("loss")
    with pytest.raises(ValueError, match="unknown mode 'smote'"):
        imbalance.loss_weights("smote", data)
    with pytest.raises(ValueError, match=r"no case of class\(es\) \[1\]"):
        imbalance.loss_weights("loss", [{"label": 0}] * 5)
