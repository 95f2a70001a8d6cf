"""Synthetic VinDr-CXR: PA chest radiographs with three readers' labels, in the PhysioNet layout.

:func:`synthesize` writes what :mod:`monai_ext.data.vindr_cxr` reads: radiographs drawn from lungs, ribs, spine,
mediastinum and a heart whose width sets the cardiothoracic ratio (CTR), stored as DX/CR DICOM (MONOCHROME1/2,
rescale, VOI window); each of three readers calls cardiomegaly when his noisy, biased reading of the CTR exceeds 0.5,
so readers disagree near the threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import atomic_path, write_synthetic_marker
from monai_ext.data.synthetic.dicom import ds_decimal, make_uid, new_dataset, set_pixels, write_dataset
from monai_ext.data.vindr_cxr import FINDINGS

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def _ellipse(U: np.ndarray, V: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((U - cu) / ru) ** 2 + ((V - cv) / rv) ** 2 <= 1


def synth_radiograph(rng: np.random.Generator, ctr: float, effusion: bool = False) -> np.ndarray:
    """A PA chest radiograph ``(H, W)`` in ``[0, 1]`` (bright = dense) with the given
    cardiothoracic ratio: heart width / inner thoracic width (between the lungs' outer edges)."""
    from scipy.ndimage import gaussian_filter

    H = int(rng.integers(352, 449))
    W = int(H * rng.uniform(0.82, 1.0))
    V, U = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")
    # patient size, position and rotation on the detector
    scale, theta = rng.uniform(0.85, 1.08), np.deg2rad(rng.uniform(-4, 4))
    du, dv = rng.uniform(-0.05, 0.05, size=2)
    Uc, Vc = U - 0.5 - du, V - 0.5 - dv
    U = (np.cos(theta) * Uc + np.sin(theta) * Vc) / scale + 0.5
    V = (-np.sin(theta) * Uc + np.cos(theta) * Vc) / scale + 0.5
    img = np.full((H, W), 0.04, np.float32)
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    thorax = rng.uniform(0.66, 0.80)  # inner thoracic width, fraction of the image width
    trunk = _ellipse(U, V, cx, 0.62, thorax / 2 + 0.09, 0.62) | ((np.abs(U - cx) < thorax / 2 + 0.12) & (V > 0.16))
    img[trunk] = 0.42  # soft tissue of the trunk and shoulders
    lung_top, lung_bottom = rng.uniform(0.10, 0.16), rng.uniform(0.70, 0.78)
    lv, lh = (lung_top + lung_bottom) / 2, (lung_bottom - lung_top) / 2
    lungs = np.zeros((H, W), bool)
    for sgn in (-1, 1):
        lungs |= _ellipse(U, V, cx + sgn * thorax / 4, lv, thorax / 4, lh)
    # vascular markings: smooth texture, denser towards the hila
    texture = gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), 2.5)
    hila = np.exp(-(((np.abs(U - cx) - 0.12) / 0.12) ** 2 + ((V - lv) / 0.2) ** 2))
    img[lungs] = 0.10 + 0.08 * hila[lungs] + 0.025 * texture[lungs] / (texture.std() + 1e-6)
    # ribs: arcs across each lung
    for k in range(9):
        v0 = lung_top + 0.02 + k * (lung_bottom - lung_top) / 9.5
        arc = v0 + 0.9 * (U - cx) ** 2 - 0.04 * np.abs(U - cx)
        img[lungs & (np.abs(V - arc) < 0.008)] += 0.07
    # heart: transverse diameter = ctr * thorax, shifted to the patient's left (image right)
    hw = ctr * thorax
    hcu = cx + hw * rng.uniform(0.10, 0.20)
    hcv = lung_bottom - rng.uniform(0.10, 0.14)
    hh = rng.uniform(0.11, 0.15)
    heart = _ellipse(U, V, hcu, hcv, hw / 2, hh) & (V < lung_bottom + 0.02)
    # mediastinum: widening from the neck down to the heart; aortic knob on the left
    med_w = thorax * rng.uniform(0.10, 0.14)
    t = np.clip((V - lung_top) / max(hcv - hh - lung_top, 1e-3), 0, 1)
    med = (np.abs(U - cx) < (med_w / 2) * (1 + 0.6 * t)) & (V > 0.0) & (V < hcv)
    img[med] = 0.52
    knob = _ellipse(U, V, cx + med_w / 2, lung_top + 0.12, rng.uniform(0.03, 0.05), 0.035)
    img[knob] = np.maximum(img[knob], 0.52)
    img[heart] = 0.55
    spine = np.abs(U - cx) < 0.03
    img[spine] += 0.04 + 0.02 * np.cos(V[spine] * 2 * np.pi * 18)
    # diaphragm / abdomen below the lungs
    dome = lung_bottom - 0.05 * np.cos((U - cx) * np.pi * 1.5) + 0.05
    img[(V > dome) & trunk] = 0.5
    if effusion:  # blunted costophrenic angle on one side
        side = cx + rng.choice([-1, 1]) * thorax * 0.33
        img[_ellipse(U, V, side, lung_bottom, thorax * 0.15, 0.08) & lungs] = 0.45
    if rng.random() < 0.5:  # breast shadows over the lower lung fields
        for sgn in (-1, 1):
            img[_ellipse(U, V, cx + sgn * thorax * 0.32, lung_bottom - 0.02, thorax * 0.17, 0.12) & lungs] += (
                rng.uniform(0.04, 0.1)
            )
    # clavicles
    for _sgn in (-1, 1):
        cl = np.abs(V - (lung_top + 0.02 + 0.15 * np.abs(U - cx))) < 0.012
        img[cl & (np.abs(U - cx) > 0.03) & (np.abs(U - cx) < thorax / 2 + 0.05)] += 0.10
    img = gaussian_filter(img, rng.uniform(0.8, 1.8))
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)
    gamma = rng.uniform(0.8, 1.25)
    return np.clip(img, 0, 1) ** gamma


def _reader_bias(seed: int, reader: str) -> float:
    return float(np.random.default_rng([seed, int(reader[1:]), 17]).normal(0, 0.015))


def _write_cxr_dicom(path: Path, img: np.ndarray, rng: np.random.Generator, seed: int, image_id: str) -> None:
    """Store a display image as a DX/CR DICOM: random bit depth, MONOCHROME1/2, modality rescale,
    VOI window (or none)."""
    bits = int(rng.choice([12, 14]))
    maxv = 2**bits - 1
    values = 0.05 * maxv + img * 0.85 * maxv
    mono1 = bool(rng.random() < 0.5)
    if mono1:
        values = maxv - values
    stored = np.clip(np.round(values), 0, maxv).astype(np.uint16)
    slope, intercept = (
        (1.0, 0.0) if rng.random() < 0.6 else (float(rng.choice([0.5, 2.0])), float(rng.choice([-1024.0, 100.0])))
    )
    modality = stored.astype(np.float64) * slope + intercept
    cr = bool(rng.random() < 0.3)
    elements: dict[str, Any] = {
        "PatientID": image_id[:8],
        "Modality": "CR" if cr else "DX",
        "StudyInstanceUID": make_uid(seed, image_id, "study"),
        "SeriesInstanceUID": make_uid(seed, image_id, "series"),
        "SeriesNumber": 1,
        "InstanceNumber": 1,
        "ImagerPixelSpacing": ds_decimal([430.0 / img.shape[0]] * 2),
        "PixelSpacing": ds_decimal([430.0 / img.shape[0]] * 2),
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        "PresentationIntentType": "FOR PRESENTATION",
        "RescaleSlope": ds_decimal(slope),
        "RescaleIntercept": ds_decimal(intercept),
        "RescaleType": "US",
    }
    if rng.random() < 0.85:  # VOI window over most of the modality range (clips the extremes)
        lo, hi = np.percentile(modality, [0.5, 99.5])
        elements["WindowCenter"] = ds_decimal((lo + hi) / 2)
        elements["WindowWidth"] = ds_decimal(max(hi - lo, 1.0))
    ds = new_dataset(CR_STORAGE if cr else DX_STORAGE, make_uid(seed, image_id, "sop"), **elements)
    set_pixels(ds, stored, bits_stored=bits, photometric="MONOCHROME1" if mono1 else "MONOCHROME2")
    write_dataset(path, ds)


def _label_row(
    rng: np.random.Generator, seed: int, truth: dict[str, Any], reader: str | None, noise: float
) -> dict[str, Any]:
    """One CSV row: ``reader``'s noisy, biased reading of the CTR (``None``: the test set's consensus row)."""
    bias = _reader_bias(seed, reader) if reader else 0.0
    cardio = int(truth["ctr"] + bias + rng.normal(0, noise) > 0.5)
    effusion, aortic = truth["effusion"], truth["aortic"]
    r = {f: 0 for f in FINDINGS}
    r.update({"Cardiomegaly": cardio, "Pleural effusion": int(effusion), "Aortic enlargement": int(aortic)})
    r["No finding"] = int(not (cardio or effusion or aortic))
    return {"image_id": truth["image_id"], **({"rad_id": reader} if reader else {}), **r}


def synthesize(out: Path, cases: int = 120, seed: int = 0) -> None:
    """Write a synthetic VinDr-CXR dataset (layout in the module docstring): ``cases`` images,
    5/6 in ``train`` with three readers each, 1/6 in ``test`` with one consensus row."""
    import csv

    from tqdm.auto import tqdm

    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    n_test = max(1, cases // 6) if cases > 1 else 0
    readers = [f"R{i}" for i in range(1, 18)]
    train_rows, test_rows = [], []
    for i in tqdm(range(cases), desc="synthetic VinDr-CXR", unit="image"):
        rng = np.random.default_rng([seed, i, 18000])
        image_id = f"{int(rng.integers(0, 2**63)):016x}{int(rng.integers(0, 2**63)):016x}"
        group = "test" if i >= cases - n_test else "train"
        ctr = float(np.clip(rng.normal(0.47, 0.06), 0.33, 0.68))
        effusion = bool(rng.random() < 0.08)
        aortic = bool(rng.random() < 0.10)
        img = synth_radiograph(rng, ctr, effusion)
        _write_cxr_dicom(out / group / f"{image_id}.dicom", img, rng, seed, image_id)
        truth = {"image_id": image_id, "ctr": ctr, "effusion": effusion, "aortic": aortic}
        if group == "train":
            for reader in rng.choice(readers, size=3, replace=False):
                train_rows.append(_label_row(rng, seed, truth, str(reader), 0.02))
        else:
            test_rows.append(_label_row(rng, seed, truth, None, 0.01))
    for name, rows, cols in (
        ("image_labels_train.csv", train_rows, ["image_id", "rad_id", *FINDINGS]),
        ("image_labels_test.csv", test_rows, ["image_id", *FINDINGS]),
    ):
        tmp = atomic_path(out / "annotations" / name)
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(out / "annotations" / name)
    (out / "README.txt").write_text(
        f"Synthetic VinDr-CXR layout written by monai_ext (seed {seed}, {cases} images). Not patient data.\n"
        "Prepare with: monai-ext prepare vindr_cxr --raw THIS_FOLDER --out OUT\n"
    )
    write_synthetic_marker(out, "vindr_cxr", cases, seed)
