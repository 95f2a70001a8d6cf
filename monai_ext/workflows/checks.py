"""Dataset checks a bundle runs before training starts, so bad input fails in seconds, naming the file."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import DataError
from monai_ext.data.limits import SizeLimitError, check_image_header, check_nifti_header

logger = logging.getLogger(__name__)

PREPARE_HINT = ("create it with `monai-ext synth <dataset> --out RAW && monai-ext prepare <dataset> --raw RAW "
                "--out DIR`, or point dataset_dir at your prepared data")


class DatasetError(ValueError):
    """The dataset given to a bundle is unusable; the message names the file and the problem."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def load_datalist(dataset_dir: str | Path, split: str, datalist: str = "datalist.json",
                  path_keys: Sequence[str] = ("image", "label")) -> list[dict[str, Any]]:
    """Entries of ``split`` with the ``path_keys`` made absolute against ``dataset_dir``.

    MONAI's :func:`monai.data.load_decathlon_datalist` reads the entries (a ``test`` split may be a list of plain
    paths, as in decathlon datalists; ``image`` / ``label`` strings or lists of strings are joined to
    ``dataset_dir``, other values, e.g. a class index under ``label``, are left as they are). Keys outside
    ``path_keys`` keep their stored value (MONAI would also join any other key that names an existing file), so
    that an entry is the same whatever the folder holds. Problems raise :class:`DatasetError` naming the datalist.
    """
    from monai.data import load_decathlon_datalist

    root = Path(dataset_dir)
    path = root / datalist
    if not path.is_file():
        raise DatasetError(f"{path}: datalist not found; {PREPARE_HINT}")
    body = _read_json(path)
    if split not in body:
        raise DatasetError(f"{path}: no {split!r} split (has {sorted(k for k in body if isinstance(body[k], list))})")
    stored = body[split]
    if not isinstance(stored, list):
        raise DatasetError(f"{path}: split {split!r} is not a list of entries ({type(stored).__name__})")
    if not stored:
        return []
    try:
        items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=split, base_dir=root)
    except (TypeError, ValueError, AttributeError) as e:  # an entry that is not a mapping (or a path, in "test")
        raise DatasetError(f"{path}: split {split!r} holds an unusable entry ({e})") from None
    return [_entry(item, raw if isinstance(raw, dict) else {"image": raw}, root, path_keys)
            for item, raw in zip(items, stored)]


def _entry(item: dict[str, Any], raw: dict[str, Any], root: Path, path_keys: Sequence[str]) -> dict[str, Any]:
    """``item`` as MONAI joined it, with the stored values outside ``path_keys`` and other ``path_keys`` joined."""
    out = {}
    for k, v in item.items():
        if k not in path_keys:
            out[k] = raw[k]
        elif k in ("image", "label"):  # joined by MONAI
            out[k] = v
        else:
            out[k] = str(root / raw[k]) if isinstance(raw[k], str) else raw[k]
    return out


def _spatial_shape(path: Path, out_itemsize: int = 4) -> tuple[int, ...]:
    """Spatial shape from the header only; :class:`DataError` naming the file when decoding it (as
    ``out_itemsize``-byte values, MONAI's float32) would exceed the size limits (:mod:`monai_ext.data.limits`)."""
    if _is_nifti(path):
        return check_nifti_header(path, out_itemsize)[:3]
    return check_image_header(path, out_itemsize)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _read_label(path: Path) -> np.ndarray:
    if _is_nifti(path):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _label_values(path: Path) -> np.ndarray:
    """Distinct voxel values of a label file (decoded as uint8 for the size limits); :class:`DataError` naming
    the file when the header is beyond the limits or the voxels cannot be read (e.g. a truncated file)."""
    if _is_nifti(path):
        check_nifti_header(path, out_itemsize=1)  # before the voxels are read
    else:
        check_image_header(path)
    try:
        arr = _read_label(path)
    except Exception as e:  # noqa: BLE001 - nibabel / Pillow raise many types for a damaged file
        raise DataError(path, f"cannot read the label voxels ({type(e).__name__}: {e})") from None
    return np.unique(arr)


def check_datalist(dataset_dir: str | Path, datalist: str = "datalist.json",
                   splits: Sequence[str] = ("training", "validation"), image_key: str = "image",
                   label_key: str = "label", task: str = "classification", num_classes: int = 2,
                   check_label_values: bool = True, max_problems: int = 20,
                   all_classes_in: Sequence[str] = ("training", "validation")) -> dict[str, int]:
    """Check a prepared dataset before training; raise :class:`DatasetError` listing the problems.

    Checks: ``dataset_dir`` exists and is not empty; the datalist exists and each split in ``splits``
    has entries; every referenced file exists; classification labels are integers in
    ``[0, num_classes)`` and every class occurs in the splits named in ``all_classes_in`` (a validation
    split with one class gives an undefined AUROC, i.e. ``best metric nan``); segmentation labels have
    the image's spatial shape and values in ``[0, num_classes)``. Returns the number of entries per split.
    """
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset_dir {root} does not exist; {PREPARE_HINT}")
    if not any(root.iterdir()):
        raise DatasetError(f"dataset_dir {root} is empty; {PREPARE_HINT}")
    problems: list[str] = []
    counts: dict[str, int] = {}
    for split in splits:
        items = load_datalist(root, split, datalist, path_keys=(image_key, label_key))
        counts[split] = len(items)
        if not items:
            problems.append(f"{root / datalist}: split {split!r} is empty")
        elif task == "classification" and split in all_classes_in:
            present = {int(it.get(label_key)) for it in items if isinstance(it.get(label_key), (int, np.integer))}
            missing = [c for c in range(num_classes) if c not in present]
            if missing and len(present) > 0:
                problems.append(f"{root / datalist}: split {split!r} ({len(items)} cases) has no case of class "
                                f"{missing}: its metric would be undefined (nan)")
        for i, item in enumerate(items):
            if len(problems) >= max_problems:
                break
            where = f"{root / datalist} [{split}][{i}]"
            img = item.get(image_key)
            if not isinstance(img, str):
                problems.append(f"{where}: no {image_key!r} path")
                continue
            img_path = Path(img)
            if not img_path.is_file():
                problems.append(f"{img_path}: image file missing (listed in {where})")
                continue
            lab = item.get(label_key)
            if task == "classification":
                if isinstance(lab, (list, tuple)):
                    lab_ok = all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in lab) and len(lab) == num_classes
                else:
                    lab_ok = isinstance(lab, (int, np.integer)) and 0 <= int(lab) < num_classes
                if not lab_ok:
                    problems.append(f"{where}: label {lab!r} is not a class index in [0, {num_classes})")
                try:  # header only: a declared size beyond the limits fails here, before any decoding
                    _spatial_shape(img_path)
                except SizeLimitError as e:
                    problems.append(str(e))
                except Exception:  # noqa: BLE001, S110 - readability is the loader's to report, with the file
                    pass
                continue
            if not isinstance(lab, str):
                problems.append(f"{where}: no {label_key!r} path")
                continue
            lab_path = Path(lab)
            if not lab_path.is_file():
                problems.append(f"{lab_path}: label file missing (listed in {where})")
                continue
            try:
                s_img, s_lab = _spatial_shape(img_path), _spatial_shape(lab_path, out_itemsize=1)
            except DataError as e:  # a header declaring a size beyond the limits, or unreadable
                problems.append(str(e))
                continue
            except Exception as e:  # unreadable header
                problems.append(f"{img_path} / {lab_path}: cannot read ({e})")
                continue
            if s_img != s_lab:
                problems.append(f"{lab_path}: label shape {s_lab} differs from image {img_path.name} shape {s_img}")
                continue
            if check_label_values:
                try:
                    vals = _label_values(lab_path)
                except DataError as e:
                    problems.append(str(e))
                    continue
                bad = vals[(vals < 0) | (vals >= num_classes) | (vals != np.round(vals))]
                if bad.size:
                    problems.append(f"{lab_path}: label values {bad[:10].tolist()} outside the declared classes "
                                    f"0..{num_classes - 1}")
    if problems:
        more = "" if len(problems) < max_problems else f"\n  (stopped after {max_problems} problems)"
        problems = problems[:max_problems]
        raise DatasetError(f"dataset {root} has {len(problems)} problem(s):\n  " + "\n  ".join(problems) + more)
    logger.info("dataset %s ok: %s", root, counts)
    return counts
