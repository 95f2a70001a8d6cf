"""VinDr-CXR: chest radiographs, cardiomegaly yes/no, cached at several square resolutions.

Real layout read by :func:`prepare` (PhysioNet release)::

    RAW/train/<image_id>.dicom                  (32-hex ids; MONOCHROME1 and MONOCHROME2)
    RAW/test/<image_id>.dicom
    RAW/annotations/image_labels_train.csv      image_id, rad_id, 28 finding columns (3 readers/image)
    RAW/annotations/image_labels_test.csv       image_id, 28 finding columns (one consensus row/image)

Per image: modality LUT, VOI LUT, ``MONOCHROME1`` inverted (:func:`monai_ext.data.dicom.read_radiograph`),
resized to each configured square resolution (default 224 and 1024; area averaging when
shrinking) and cached as 8-bit PNG (default), 16-bit PNG or float NIfTI under
``OUT/images_<res>/<image_id>.<ext>``. Labels (``--finding``, default ``Cardiomegaly``) from the
training CSV by a consensus rule over its readers (``majority`` by default: more than half;
``any``: at least one); the test CSV's consensus row is taken as is.

Splits: ``paper`` (default): the official training images split 9000/3000/3000 (the SFN paper's
proportions) into training/validation/test, official test images listed as ``official_test``;
``official``: official training images split 3:1 into training/validation, official test as test.

Outputs: ``datalist.json`` whose entries carry ``image`` (first resolution), ``image_<res>`` for
each resolution, ``label``, ``image_id``, ``votes``/``readers``; and one ``datalist_<res>.json``
per resolution whose ``image`` is that resolution, so that a bundle selects the resolution by
overriding one value (the datalist path) and keeps the key ``image`` throughout.

:func:`synthesize` writes the same layout: PA chest radiographs drawn from lungs, ribs, spine,
mediastinum and a heart whose width sets the cardiothoracic ratio (CTR); each of three readers
calls cardiomegaly when his noisy, biased reading of the CTR exceeds 0.5, so readers disagree
near the threshold.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import (
    DataError,
    SkipLog,
    atomic_path,
    check_image_content,
    data_origin,
    grouped_split,
    write_datalist,
    write_synthetic_marker,
)
from monai_ext.data.dicom import ds_decimal, make_uid, new_dataset, read_radiograph, set_pixels, write_dataset
from monai_ext.data.runner import check_settings, run_cases

logger = logging.getLogger(__name__)

#: the 28 image-level label columns of VinDr-CXR (22 local lesions + 6 global diagnoses)
FINDINGS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung cavity",
    "Lung cyst", "Lung Opacity", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)
TRAIN_CSV = "annotations/image_labels_train.csv"
TEST_CSV = "annotations/image_labels_test.csv"
IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_RESOLUTIONS = (224, 1024)
#: the SFN paper's training / validation / test sizes (of 15,000 official training images)
PAPER_SPLIT = (9000, 3000, 3000)
FORMATS = {"png": ".png", "png16": ".png", "nifti": ".nii.gz"}
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: splits a usable prepared folder needs and the classes each must hold (checked by ``monai-ext prepare``)
REQUIRED_SPLITS = ("training", "validation", "test")
CLASSES = (0, 1)
#: columns each label CSV must have besides the finding (the training CSV has one row per reader)
REQUIRED_COLUMNS = {"train": ("image_id", "rad_id"), "test": ("image_id",)}


# ----------------------------------------------------------------------------------------------
# labels


def consensus(votes: Sequence[int], rule: str = "majority") -> int:
    """Consensus of reader votes: ``majority`` (more than half positive) or ``any``."""
    if not votes:
        raise ValueError("no reader votes")
    k = int(sum(votes))
    if rule == "majority":
        return int(2 * k > len(votes))
    if rule == "any":
        return int(k > 0)
    raise ValueError(f"unknown consensus rule {rule!r}; use 'majority' or 'any'")


def read_labels(csv_path: Path, finding: str = "Cardiomegaly", rule: str = "majority",
                required: Sequence[str] = ("image_id",)) -> tuple[dict[str, dict[str, int]], list[DataError]]:
    """Per-image label from a VinDr label CSV: ``{image_id: {"label", "votes", "readers"}}``.

    Several rows of one image (one per reader) are combined by ``rule``; a single row is taken
    as is. Rows with a malformed id or value are returned as problems (naming the CSV and row).
    Raises :class:`DataError` naming the CSV when a ``required`` column or the ``finding`` column is
    missing or the file has no data rows.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataError(csv_path, f"cannot read label CSV ({type(e).__name__}: {e})") from e
    table.columns = [c.strip() for c in table.columns]
    for col in (*required, finding):
        if col not in table.columns:
            raise DataError(csv_path, f"required column {col!r} missing (columns: {list(table.columns)[:6]}...)")
    if table.empty:
        raise DataError(csv_path, "label CSV has a header but no data rows")
    votes: dict[str, list[int]] = {}
    problems: list[DataError] = []
    for row_no, (image_id, value) in enumerate(zip(table["image_id"], table[finding]), start=2):
        image_id = image_id.strip()
        if not image_id:
            problems.append(DataError(csv_path, f"row {row_no}: empty image_id"))
            continue
        try:
            v = float(value)
            if v not in (0.0, 1.0):
                raise ValueError
        except ValueError:
            problems.append(DataError(csv_path, f"row {row_no}: {finding} value {value!r} of image {image_id} is not 0 or 1"))
            continue
        votes.setdefault(image_id, []).append(int(v))
    labels = {i: {"label": consensus(v, rule), "votes": int(sum(v)), "readers": len(v)} for i, v in votes.items()}
    return labels, problems


# ----------------------------------------------------------------------------------------------
# images


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` float image -> ``(size, size)``: area averaging when shrinking (no aliasing),
    bilinear with anti-aliasing otherwise (MONAI ``Resize``)."""
    from monai.transforms import Resize

    down = size <= min(image.shape)
    resize = Resize((size, size), mode="area" if down else "bilinear", anti_aliasing=not down)
    out = resize(image[None].astype(np.float32))
    return np.clip(np.asarray(out[0], dtype=np.float32), 0.0, 1.0)


def save_image(image: np.ndarray, path: Path, fmt: str) -> None:
    """Write a ``(H, W)`` image in ``[0, 1]`` atomically as 8-/16-bit PNG or float32 NIfTI.

    NIfTI arrays are stored transposed (``(W, H)``), the order MONAI's PNG reader returns, so a
    bundle gets the same array from either format.
    """
    tmp = atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("png", "png16"):
        from PIL import Image

        if fmt == "png":
            pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
        else:
            pil = Image.fromarray(np.round(image * 65535).astype(np.uint16))
        pil.save(tmp, format="PNG", compress_level=1)  # level 6 costs ~5x the time for ~10% less disk
    elif fmt == "nifti":
        import nibabel as nib

        nii = nib.Nifti1Image(np.ascontiguousarray(image.T, dtype=np.float32), np.eye(4))
        with open(tmp, "wb") as fh:
            fh.write(gzip.compress(nii.to_bytes(), compresslevel=6, mtime=0))
    else:
        raise ValueError(f"unknown image format {fmt!r}; use one of {sorted(FORMATS)}")
    tmp.replace(path)


def _prepare_image(case: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Read one DICOM and write it at every resolution (worker function; see :func:`prepare`)."""
    image, meta = read_radiograph(Path(case["dicom"]))
    check_image_content(image, case["dicom"], "radiograph")
    for res, path in case["outputs"].items():
        save_image(resize_square(image, int(res)), Path(path), fmt)
    return meta


# ----------------------------------------------------------------------------------------------
# preparation


def add_prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(DEFAULT_RESOLUTIONS),
                        help="square output sizes in pixels (default: 224 1024)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="png",
                        help="cache format: 8-bit PNG (default), 16-bit PNG, float NIfTI")
    parser.add_argument("--consensus", choices=("majority", "any"), default="majority",
                        help="how the readers of a training image are combined (default: majority)")
    parser.add_argument("--finding", default="Cardiomegaly", help="label column (default: Cardiomegaly)")
    parser.add_argument("--split", choices=("paper", "official"), default="paper",
                        help="paper: official train split 9000/3000/3000; official: train/val 3:1 + official test")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")


def prepare(
    raw: Path,
    out: Path,
    overwrite: bool = False,
    seed: int = 0,
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    format: str = "png",
    consensus: str = "majority",
    finding: str = "Cardiomegaly",
    split: str = "paper",
    workers: int = 1,
) -> dict[str, Any]:
    """Prepare VinDr-CXR (see the module docstring). Returns the datalist (``datalist.json``)."""
    raw, out = Path(raw), Path(out)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {sorted(FORMATS)}")
    if split not in ("paper", "official"):
        raise ValueError(f"unknown split {split!r}; use 'paper' or 'official'")
    if consensus not in ("majority", "any"):
        raise ValueError(f"unknown consensus rule {consensus!r}; use 'majority' or 'any'")
    resolutions = [int(r) for r in resolutions]
    if not resolutions or min(resolutions) < 8:
        raise ValueError(f"resolutions must be sizes >= 8 px, got {resolutions}")
    train_csv = raw / TRAIN_CSV
    if not train_csv.is_file():
        raise FileNotFoundError(f"VinDr-CXR label file not found: {train_csv}")
    check_settings(out, {"format": format}, overwrite)
    ext = FORMATS[format]
    skips = SkipLog()
    groups: dict[str, dict[str, dict[str, int]]] = {}
    for group, csv_rel, rule in (("train", TRAIN_CSV, consensus), ("test", TEST_CSV, "majority")):
        csv_path = raw / csv_rel
        if not csv_path.is_file():
            if group == "test":
                logger.warning("no %s: official test images are not prepared", csv_path)
            continue
        labels, problems = read_labels(csv_path, finding, rule, required=REQUIRED_COLUMNS[group])
        for p in problems:
            skips.add(f"{csv_path.name} {p.problem.split(':')[0]}", p)
        if group == "test" and any(v["readers"] > 1 for v in labels.values()):
            logger.warning("%s holds several rows for some images; combined by majority", csv_path)
        groups[group] = labels
    todo: list[dict[str, Any]] = []
    ready: dict[str, list[str]] = {g: [] for g in groups}
    for group, labels in groups.items():
        folder = raw / group
        on_disk = {p.stem: p for p in folder.glob("*.dicom")} if folder.is_dir() else {}
        on_disk.update({p.stem: p for p in folder.glob("*.dcm")} if folder.is_dir() else {})
        for image_id in sorted(set(labels) | set(on_disk)):
            if image_id not in on_disk:
                skips.add(image_id, DataError(folder / f"{image_id}.dicom", f"image listed in {group} label CSV but the file is missing"))
                continue
            if image_id not in labels:
                skips.add(image_id, DataError(on_disk[image_id], f"image has no row in the {group} label CSV"))
                continue
            outputs = {r: str(out / f"images_{r}" / f"{image_id}{ext}") for r in resolutions}
            if not overwrite and all(Path(p).is_file() for p in outputs.values()):
                ready[group].append(image_id)
            else:
                todo.append({"id": image_id, "group": group, "dicom": str(on_disk[image_id]), "outputs": outputs})
    n_ready = sum(len(v) for v in ready.values())
    if n_ready:
        logger.info("%d image(s) already prepared in %s (use --overwrite to redo)", n_ready, out)
    worker = functools.partial(_prepare_image, fmt=format)
    for case, meta, error in run_cases(worker, todo, workers=workers, desc="VinDr-CXR images"):
        if error is not None:
            skips.add(case["id"], error)
        else:
            ready[case["group"]].append(case["id"])

    def entry(image_id: str, group: str) -> dict[str, Any]:
        lab = groups[group][image_id]
        e: dict[str, Any] = {"image": f"images_{resolutions[0]}/{image_id}{ext}"}
        e.update({f"image_{r}": f"images_{r}/{image_id}{ext}" for r in resolutions})
        e.update({"label": lab["label"], "image_id": image_id, "votes": lab["votes"], "readers": lab["readers"]})
        return e

    train_ids = sorted(ready.get("train", []))
    test_ids = sorted(ready.get("test", []))
    datalist: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    if split == "paper":
        assign = grouped_split(train_ids, fractions=PAPER_SPLIT, seed=seed)
        for i in train_ids:
            datalist[assign[i]].append(entry(i, "train"))
        datalist["official_test"] = [entry(i, "test") for i in test_ids]
    else:
        assign = grouped_split(train_ids, fractions=(3, 1, 0), seed=seed)
        for i in train_ids:
            datalist[assign[i]].append(entry(i, "train"))
        datalist["test"] = [entry(i, "test") for i in test_ids]
    meta = {
        "dataset": "vindr_cxr", "num_classes": 2, "finding": finding, "consensus": consensus,
        "split": split, "resolutions": resolutions, "settings": {"format": format}, "seed": seed,
        "data_origin": data_origin(raw),
    }
    out.mkdir(parents=True, exist_ok=True)  # also when no image could be prepared: the datalist says so
    for r in resolutions:  # one datalist per resolution: `image` is that resolution
        per_res = {k: [{**e, "image": e[f"image_{r}"]} for e in v] for k, v in datalist.items()}
        path = out / f"datalist_{r}.json"
        tmp = atomic_path(path)
        tmp.write_text(json.dumps({**per_res, **meta}, indent=2) + "\n")
        tmp.replace(path)
    write_datalist(out, datalist, **meta)
    skips.write(out)
    return datalist


# ----------------------------------------------------------------------------------------------
# synthetic data


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
            img[_ellipse(U, V, cx + sgn * thorax * 0.32, lung_bottom - 0.02, thorax * 0.17, 0.12) & lungs] += rng.uniform(0.04, 0.1)
    # clavicles
    for sgn in (-1, 1):
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
    slope, intercept = (1.0, 0.0) if rng.random() < 0.6 else (float(rng.choice([0.5, 2.0])), float(rng.choice([-1024.0, 100.0])))
    modality = stored.astype(np.float64) * slope + intercept
    cr = bool(rng.random() < 0.3)
    elements: dict[str, Any] = dict(
        PatientID=image_id[:8], Modality="CR" if cr else "DX", StudyInstanceUID=make_uid(seed, image_id, "study"),
        SeriesInstanceUID=make_uid(seed, image_id, "series"), SeriesNumber=1, InstanceNumber=1,
        ImagerPixelSpacing=ds_decimal([430.0 / img.shape[0]] * 2), PixelSpacing=ds_decimal([430.0 / img.shape[0]] * 2),
        BodyPartExamined="CHEST", ViewPosition="PA", PresentationIntentType="FOR PRESENTATION",
        RescaleSlope=ds_decimal(slope), RescaleIntercept=ds_decimal(intercept), RescaleType="US",
    )
    if rng.random() < 0.85:  # VOI window over most of the modality range (clips the extremes)
        lo, hi = np.percentile(modality, [0.5, 99.5])
        elements["WindowCenter"] = ds_decimal((lo + hi) / 2)
        elements["WindowWidth"] = ds_decimal(max(hi - lo, 1.0))
    ds = new_dataset(CR_STORAGE if cr else DX_STORAGE, make_uid(seed, image_id, "sop"), **elements)
    set_pixels(ds, stored, bits_stored=bits, photometric="MONOCHROME1" if mono1 else "MONOCHROME2")
    write_dataset(path, ds)


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

        def row(reader: str | None, noise: float) -> dict[str, Any]:
            bias = _reader_bias(seed, reader) if reader else 0.0
            cardio = int(ctr + bias + rng.normal(0, noise) > 0.5)
            r = {f: 0 for f in FINDINGS}
            r.update({"Cardiomegaly": cardio, "Pleural effusion": int(effusion), "Aortic enlargement": int(aortic)})
            r["No finding"] = int(not (cardio or effusion or aortic))
            return {"image_id": image_id, **({"rad_id": reader} if reader else {}), **r}

        if group == "train":
            for reader in rng.choice(readers, size=3, replace=False):
                train_rows.append(row(str(reader), 0.02))
        else:
            test_rows.append(row(None, 0.01))
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
