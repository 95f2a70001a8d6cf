"""AIROGS: colour fundus photographs, referable glaucoma (RG) vs no referable glaucoma (NRG).

Real layout read by :func:`prepare` (the AIROGS challenge's training set, Zenodo)::

    RAW/train_labels.csv            challenge_id, class (RG | NRG); 101,442 rows
    RAW/0/<challenge_id>.jpg ...    JPEG photographs in numbered sub-folders 0, 1, ..., 5
    RAW/5/<challenge_id>.jpg

Per image: read with MONAI's ``LoadImage`` (``PILReader``) after the header size check, the black surround
cropped to the round field of view (``--no-fov-crop`` keeps the whole frame), padded to a square, resized to each
``--resolutions`` size (area averaging) and cached as 8-bit RGB PNG under ``OUT/images_<res>/<challenge_id>.png``.
Label 1 = RG. Split: the SFN paper's 64,922 / 16,231 / 20,289 (of 101,442) proportions into
training / validation / test (each image its own group: AIROGS publishes no patient id), seeded.

Skipped with the file and the reason (``skipped.json``): a CSV row whose image is missing, an image without a row,
a class value other than RG / NRG, an id listed twice with different classes or found in two sub-folders, an
unreadable or truncated JPEG, an empty or constant image.

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.airogs`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_ext.data.common import DataError, SkipLog, data_origin, grouped_split
from monai_ext.data.dataset import Option
from monai_ext.data.jpeg import photo_case, prepare_photos, write_resolution_datalists
from monai_ext.data.runner import check_settings

logger = logging.getLogger(__name__)

LABELS_CSV = "train_labels.csv"
ID_COLUMN, CLASS_COLUMN = "challenge_id", "class"
#: class value -> label (1 = referable glaucoma)
CLASS_VALUES = {"NRG": 0, "RG": 1}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png")
#: the SFN paper's training / validation / test sizes (of 101,442 images)
PAPER_SPLIT = (64922, 16231, 20289)
DEFAULT_RESOLUTIONS = (224,)
REQUIRED_SPLITS = ("training", "validation", "test")
CLASSES = (0, 1)


def read_labels(csv_path: Path) -> tuple[dict[str, int], list[DataError]]:
    """``{challenge_id: label}`` from ``train_labels.csv``; bad rows come back as problems naming the CSV and row.
    Raises :class:`DataError` when the file is unreadable, lacks a column or has no rows."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataError(csv_path, f"cannot read label CSV ({type(e).__name__}: {e})") from e
    table.columns = [c.strip() for c in table.columns]
    for col in (ID_COLUMN, CLASS_COLUMN):
        if col not in table.columns:
            raise DataError(csv_path, f"required column {col!r} missing (columns: {list(table.columns)})")
    if table.empty:
        raise DataError(csv_path, "label CSV has a header but no data rows")
    labels: dict[str, int] = {}
    problems: list[DataError] = []
    conflicting: set[str] = set()
    for row_no, (cid, value) in enumerate(zip(table[ID_COLUMN], table[CLASS_COLUMN]), start=2):
        cid, value = cid.strip(), value.strip()
        if not cid:
            problems.append(DataError(csv_path, f"row {row_no}: empty {ID_COLUMN}"))
        elif value not in CLASS_VALUES:
            problems.append(DataError(csv_path, f"row {row_no}: class {value!r} of {cid} is not one of "
                                                f"{sorted(CLASS_VALUES)}"))
        elif cid in labels and labels[cid] != CLASS_VALUES[value]:
            problems.append(DataError(csv_path, f"row {row_no}: {cid} listed again with another class"))
            conflicting.add(cid)
        else:
            labels[cid] = CLASS_VALUES[value]
    for cid in conflicting:
        labels.pop(cid, None)
    return labels, problems


def find_images(raw: Path) -> tuple[dict[str, Path], list[DataError]]:
    """``{challenge_id: file}`` over the numbered sub-folders of ``raw`` (``0`` ... ``5``; any number is
    accepted); an id found twice is a problem (both files named) and left out."""
    found: dict[str, list[Path]] = {}
    for folder in sorted((d for d in raw.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)):
        for p in sorted(folder.iterdir()):
            if p.suffix in IMAGE_SUFFIXES and p.is_file():
                found.setdefault(p.stem, []).append(p)
    files = {cid: ps[0] for cid, ps in found.items() if len(ps) == 1}
    problems = [DataError(ps[0], f"{cid} found in {len(ps)} sub-folders ({', '.join(str(p) for p in ps)})")
                for cid, ps in found.items() if len(ps) > 1]
    return files, problems


#: ``monai-ext prepare airogs`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of("--resolutions", type=int, nargs="+", default=list(DEFAULT_RESOLUTIONS),
              help="square output sizes in pixels (default: 224)"),
    Option.of("--no-fov-crop", dest="fov_crop", action="store_false",
              help="keep the whole frame (default: crop the black surround to the field of view)"),
    Option.of("--workers", type=int, default=1, help="worker processes"),
)


def prepare(raw: Path, out: Path, overwrite: bool = False, seed: int = 0,
            resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, fov_crop: bool = True,
            workers: int = 1) -> dict[str, Any]:
    """Prepare AIROGS (see the module docstring). Returns the datalist (``datalist.json``)."""
    raw, out = Path(raw), Path(out)
    resolutions = [int(r) for r in resolutions]
    if not resolutions or min(resolutions) < 8:
        raise ValueError(f"resolutions must be sizes >= 8 px, got {resolutions}")
    csv_path = raw / LABELS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"AIROGS label file not found: {csv_path}")
    settings = {"fov_crop": bool(fov_crop), "square": "pad"}
    check_settings(out, settings, overwrite)
    skips = SkipLog()
    labels, problems = read_labels(csv_path)
    for p in problems:
        skips.add(f"{csv_path.name} {p.problem.split(':')[0]}", p)
    files, problems = find_images(raw)
    duplicated = {Path(p.path).stem for p in problems}
    for p in problems:
        skips.add(Path(p.path).stem, p)
    cases = []
    for cid in sorted(set(labels) | set(files)):
        if cid not in files:
            if cid not in duplicated:
                skips.add(cid, DataError(raw / f"<0-5>/{cid}.jpg", f"listed in {LABELS_CSV} but no image file "
                                                                    "in the numbered sub-folders"))
            continue
        if cid not in labels:
            skips.add(cid, DataError(files[cid], f"image has no valid row in {LABELS_CSV}"))
            continue
        cases.append(photo_case(cid, files[cid], out, resolutions, "fundus photograph"))
    ready = prepare_photos(cases, skips, workers=workers, square="pad", fov=fov_crop, desc="AIROGS images",
                           overwrite=overwrite)
    ids = sorted(ready)
    assign = grouped_split(ids, fractions=PAPER_SPLIT, seed=seed)
    datalist: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for cid in ids:
        entry: dict[str, Any] = {"image": f"images_{resolutions[0]}/{cid}.png"}
        entry.update({f"image_{r}": f"images_{r}/{cid}.png" for r in resolutions})
        entry.update({"label": labels[cid], "challenge_id": cid, "source": str(files[cid].relative_to(raw))})
        datalist[assign[cid]].append(entry)
    meta = {"dataset": "airogs", "num_classes": 2, "classes": {"0": "NRG", "1": "RG"}, "split": "paper",
            "paper_split": list(PAPER_SPLIT), "resolutions": resolutions, "settings": settings, "seed": seed,
            "data_origin": data_origin(raw)}
    write_resolution_datalists(out, datalist, meta, resolutions)
    skips.write(out)
    return datalist
