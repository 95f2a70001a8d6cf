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

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.vindr_cxr`.
"""

from __future__ import annotations

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
)
from monai_ext.data.dataset import Option, moved_attribute
from monai_ext.data.dicom import read_radiograph
from monai_ext.data.runner import check_settings, run_cases

logger = logging.getLogger(__name__)

#: the 28 image-level label columns of VinDr-CXR (22 local lesions + 6 global diagnoses)
FINDINGS = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung cavity",
    "Lung cyst",
    "Lung Opacity",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
)
TRAIN_CSV = "annotations/image_labels_train.csv"
TEST_CSV = "annotations/image_labels_test.csv"
IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_RESOLUTIONS = (224, 1024)
#: the SFN paper's training / validation / test sizes (of 15,000 official training images)
PAPER_SPLIT = (9000, 3000, 3000)
FORMATS = {"png": ".png", "png16": ".png", "nifti": ".nii.gz"}
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


def read_labels(
    csv_path: Path, finding: str = "Cardiomegaly", rule: str = "majority", required: Sequence[str] = ("image_id",)
) -> tuple[dict[str, dict[str, int]], list[DataError]]:
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
            problems.append(
                DataError(csv_path, f"row {row_no}: {finding} value {value!r} of image {image_id} is not 0 or 1")
            )
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


#: ``monai-ext prepare vindr_cxr`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of(
        "--resolutions",
        type=int,
        nargs="+",
        default=list(DEFAULT_RESOLUTIONS),
        help="square output sizes in pixels (default: 224 1024)",
    ),
    Option.of(
        "--format",
        choices=sorted(FORMATS),
        default="png",
        help="cache format: 8-bit PNG (default), 16-bit PNG, float NIfTI",
    ),
    Option.of(
        "--consensus",
        choices=("majority", "any"),
        default="majority",
        help="how the readers of a training image are combined (default: majority)",
    ),
    Option.of("--finding", default="Cardiomegaly", help="label column (default: Cardiomegaly)"),
    Option.of(
        "--split",
        choices=("paper", "official"),
        default="paper",
        help="paper: official train split 9000/3000/3000; official: train/val 3:1 + official test",
    ),
    Option.of("--workers", type=int, default=1, help="worker processes"),
)


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
                skips.add(
                    image_id,
                    DataError(
                        folder / f"{image_id}.dicom", f"image listed in {group} label CSV but the file is missing"
                    ),
                )
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
    for case, _meta, error in run_cases(worker, todo, workers=workers, desc="VinDr-CXR images"):
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
        "dataset": "vindr_cxr",
        "num_classes": 2,
        "finding": finding,
        "consensus": consensus,
        "split": split,
        "resolutions": resolutions,
        "settings": {"format": format},
        "seed": seed,
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


#: generator names that moved to :mod:`monai_ext.data.synthetic.vindr_cxr` (still found here, with a
#: DeprecationWarning)
_MOVED = ("synthesize", "synth_radiograph", "DX_STORAGE", "CR_STORAGE")


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, "monai_ext.data.synthetic.vindr_cxr", _MOVED, name)
