"""ISIC 2020: dermoscopic photographs of skin lesions, benign (0) vs malignant (1, melanoma), split by patient.

Real layout read by :func:`prepare` (the ISIC 2020 challenge training set)::

    RAW/ISIC_2020_Training_GroundTruth.csv   image_name, patient_id, sex, age_approx,
                                             anatom_site_general_challenge, diagnosis, benign_malignant, target
    RAW/train/<image_name>.jpg               33,126 JPEGs (2,056 patients; 584 malignant, 1.8 %)

Per image: read with MONAI's ``LoadImage`` (``PILReader``) after the header size check, made square by a centre
crop (``--square crop``, default: the lesion is centred in dermoscopy; ``pad`` keeps the whole frame), resized to each
``--resolutions`` size (area averaging) and cached as 8-bit RGB PNG under ``OUT/images_<res>/<image_name>.png``.
Label: ``target`` (0 benign, 1 malignant; it must agree with ``benign_malignant`` when that column is filled).

Split: by patient (:func:`patient_split`), so that no patient has images in two splits (checked after the split:
:func:`check_patient_disjoint`), in the SFN paper's image proportions 21,138 / 5,273 / 6,715 (of 33,126), patients
with and without a malignant lesion split separately so that every split gets its share of the rare positives.

Skipped with the file and the reason (``skipped.json``): a row without ``patient_id``, a ``target`` other than 0 / 1
or contradicting ``benign_malignant``, an image listed twice, a row whose JPEG is missing, a JPEG without a row, an
unreadable or truncated JPEG, an empty or constant image.

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.isic`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import SPLITS, DataError, SkipLog, data_origin
from monai_ext.data.dataset import Option
from monai_ext.data.jpeg import SQUARE_MODES, photo_case, prepare_photos, write_resolution_datalists
from monai_ext.data.runner import check_settings

logger = logging.getLogger(__name__)

LABELS_CSV = "ISIC_2020_Training_GroundTruth.csv"
IMAGE_FOLDER = "train"
COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target")
REQUIRED_COLUMNS = ("image_name", "patient_id", "target")
#: extra columns carried into the datalist entries (empty values kept as "")
META_COLUMNS = ("sex", "age_approx", "anatom_site_general_challenge", "diagnosis")
#: the SFN paper's training / validation / test sizes (of 33,126 images)
PAPER_SPLIT = (21138, 5273, 6715)
DEFAULT_RESOLUTIONS = (224,)
REQUIRED_SPLITS = ("training", "validation", "test")
CLASSES = (0, 1)


def read_labels(csv_path: Path) -> tuple[dict[str, dict[str, Any]], list[DataError]]:
    """``{image_name: {"label", "patient_id", ...}}`` from the ground-truth CSV; bad rows come back as problems
    naming the CSV, the row and the image. Raises :class:`DataError` when the file is unreadable, lacks a
    required column or has no rows."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataError(csv_path, f"cannot read label CSV ({type(e).__name__}: {e})") from e
    table.columns = [c.strip() for c in table.columns]
    for col in REQUIRED_COLUMNS:
        if col not in table.columns:
            raise DataError(csv_path, f"required column {col!r} missing (columns: {list(table.columns)})")
    if table.empty:
        raise DataError(csv_path, "label CSV has a header but no data rows")
    rows: dict[str, dict[str, Any]] = {}
    problems: list[DataError] = []
    twice: set[str] = set()
    for row_no, row in enumerate(table.to_dict("records"), start=2):
        name, patient, target = row["image_name"].strip(), row["patient_id"].strip(), row["target"].strip()
        bm = str(row.get("benign_malignant", "")).strip().lower()
        where = f"row {row_no} ({name or 'no image_name'})"
        if not name:
            problems.append(DataError(csv_path, f"row {row_no}: empty image_name"))
        elif not patient:
            problems.append(DataError(csv_path, f"{where}: missing patient_id (needed for the patient split)"))
        elif target not in ("0", "1", "0.0", "1.0"):
            problems.append(DataError(csv_path, f"{where}: target {target!r} is not 0 or 1"))
        elif bm and bm != ("malignant" if float(target) == 1 else "benign"):
            problems.append(DataError(csv_path, f"{where}: target {target} contradicts benign_malignant {bm!r}"))
        elif name in rows:
            problems.append(DataError(csv_path, f"{where}: image listed twice"))
            twice.add(name)
        else:
            rows[name] = {"label": int(float(target)), "patient_id": patient,
                          **{c: str(row.get(c, "")).strip() for c in META_COLUMNS}}
    for name in twice:
        rows.pop(name, None)
    return rows, problems


def patient_split(patients: Mapping[str, str], positive: Mapping[str, int], fractions: Sequence[float] = PAPER_SPLIT,
                  seed: int = 0) -> dict[str, str]:
    """``{image: split}`` with every patient's images in one split and the splits' *image* counts in the
    ``fractions`` proportions. ``patients``: image -> patient id; ``positive``: image -> label. Patients with a
    positive image and those without are assigned separately (in seeded random order, each to the split furthest
    below its share), so the rare positives are spread in the same proportions."""
    frac = np.asarray(fractions, dtype=float) / float(np.sum(fractions))
    by_patient: dict[str, list[str]] = {}
    for image, patient in patients.items():
        by_patient.setdefault(patient, []).append(image)
    rng = np.random.default_rng(seed)
    assign: dict[str, str] = {}
    for stratum in (True, False):
        group = sorted(p for p, ims in by_patient.items() if any(positive[i] for i in ims) == stratum)
        total = sum(len(by_patient[p]) for p in group)
        filled = np.zeros(len(frac))
        for k in rng.permutation(len(group)):
            p = group[k]
            target = frac * max(total, 1)
            s = int(np.argmax((target - filled) / target))
            filled[s] += len(by_patient[p])
            for image in by_patient[p]:
                assign[image] = SPLITS[s]
    return assign


def check_patient_disjoint(datalist: Mapping[str, Sequence[Mapping[str, Any]]], where: str | Path) -> None:
    """Raise :class:`DataError` (naming ``where``) when a patient has images in two splits."""
    seen: dict[str, str] = {}
    for split, entries in datalist.items():
        for e in entries:
            other = seen.setdefault(e["patient_id"], split)
            if other != split:
                raise DataError(where, f"patient {e['patient_id']} has images in splits {other!r} and {split!r}")


#: ``monai-ext prepare isic`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of("--resolutions", type=int, nargs="+", default=list(DEFAULT_RESOLUTIONS),
              help="square output sizes in pixels (default: 224)"),
    Option.of("--square", choices=SQUARE_MODES, default="crop",
              help="crop: centre square (default); pad: whole frame padded with black"),
    Option.of("--workers", type=int, default=1, help="worker processes"),
)


def prepare(raw: Path, out: Path, overwrite: bool = False, seed: int = 0,
            resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, square: str = "crop", workers: int = 1) -> dict:
    """Prepare ISIC 2020 (see the module docstring). Returns the datalist (``datalist.json``)."""
    raw, out = Path(raw), Path(out)
    resolutions = [int(r) for r in resolutions]
    if not resolutions or min(resolutions) < 8:
        raise ValueError(f"resolutions must be sizes >= 8 px, got {resolutions}")
    if square not in SQUARE_MODES:
        raise ValueError(f"unknown square mode {square!r}; use one of {SQUARE_MODES}")
    csv_path = raw / LABELS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"ISIC 2020 label file not found: {csv_path}")
    settings = {"square": square}
    check_settings(out, settings, overwrite)
    skips = SkipLog()
    rows, problems = read_labels(csv_path)
    for p in problems:
        skips.add(f"{csv_path.name} {p.problem.split(':')[0]}", p)
    folder = raw / IMAGE_FOLDER
    files = {p.stem: p for p in sorted(folder.glob("*.jpg"))} if folder.is_dir() else {}
    listed_bad = {p.problem.split("(")[1].split(")")[0] for p in problems if "(" in p.problem}
    cases = []
    for name in sorted(set(rows) | set(files)):
        if name not in files:
            skips.add(name, DataError(folder / f"{name}.jpg", f"listed in {LABELS_CSV} but the file is missing"))
            continue
        if name not in rows:
            why = "its row in the CSV is invalid (see the CSV entry)" if name in listed_bad else "no row in the CSV"
            skips.add(name, DataError(files[name], f"image skipped: {why}"))
            continue
        cases.append(photo_case(name, files[name], out, resolutions, "dermoscopic image"))
    ready = prepare_photos(cases, skips, workers=workers, square=square, desc="ISIC images", overwrite=overwrite)
    names = sorted(ready)
    assign = patient_split({n: rows[n]["patient_id"] for n in names}, {n: rows[n]["label"] for n in names},
                           PAPER_SPLIT, seed)
    datalist: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for name in names:
        entry: dict[str, Any] = {"image": f"images_{resolutions[0]}/{name}.png"}
        entry.update({f"image_{r}": f"images_{r}/{name}.png" for r in resolutions})
        entry.update({"label": rows[name]["label"], "image_name": name, **{k: v for k, v in rows[name].items()
                                                                             if k != "label"}})
        datalist[assign[name]].append(entry)
    check_patient_disjoint(datalist, out / "datalist.json")
    counts = {s: {"images": len(v), "patients": len({e["patient_id"] for e in v}),
                  "malignant": sum(e["label"] for e in v)} for s, v in datalist.items()}
    logger.info("ISIC patient split: %s", counts)
    meta = {"dataset": "isic", "num_classes": 2, "classes": {"0": "benign", "1": "malignant"},
            "split": "paper, grouped by patient_id", "paper_split": list(PAPER_SPLIT), "split_counts": counts,
            "resolutions": resolutions, "settings": settings, "seed": seed, "data_origin": data_origin(raw)}
    write_resolution_datalists(out, datalist, meta, resolutions)
    skips.write(out)
    return datalist
