"""RadImageNet brain MRI: 10 classes (9 findings and normal), the efficient-transformers benchmark's task.

Real layout read by :func:`prepare` (RadImageNet, one folder per class under the modality/anatomy folder)::

    RAW/MR/brain/acute_infarct/<image>.png
    RAW/MR/brain/arteriovenous_anomaly/<image>.png
    ...
    RAW/MR/brain/white_matter_changes/<image>.png

``--modality-dir`` names another folder than ``MR/brain`` (e.g. ``radiology_ai/MR/brain``). Folder names are
matched after lower-casing and turning spaces / hyphens into underscores (``Pituitary lesion`` ->
``pituitary_lesion``; the benchmark's spelling ``pituatary`` is accepted). A folder of another name is an error
naming it (the wrong root, or a class this task does not have), before any image is read.

Per image: read with MONAI's ``LoadImage`` (``PILReader``) after the header size check, padded to a square, resized
to each ``--resolutions`` size and cached as 8-bit RGB PNG under ``OUT/images_<res>/<class>/<image>.png``. Labels
0-9 in :data:`CLASS_FOLDERS` order. Split: stratified per class into training / validation / test in RadImageNet's
75 / 10 / 15 % proportions, seeded, at least one image of every class in every split when the class has three or
more. The layout carries no patient id, so the split is per image (as the benchmark's): slices of one patient
may fall into different splits.

Skipped with the file and the reason (``skipped.json``): an unreadable, truncated, empty or constant image, a file
that is not an image (by suffix).

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.radimagenet_brain`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_ext.data.common import DataError, SkipLog, data_origin, split_counts
from monai_ext.data.dataset import Option
from monai_ext.data.jpeg import photo_case, prepare_photos, write_resolution_datalists
from monai_ext.data.runner import check_settings

logger = logging.getLogger(__name__)

MODALITY_DIR = "MR/brain"
#: class folder -> (label, Table 1 count of the benchmark)
CLASS_FOLDERS: dict[str, tuple[int, int]] = {
    "acute_infarct": (0, 513), "arteriovenous_anomaly": (1, 272), "chronic_infarct": (2, 2307), "edema": (3, 125),
    "extra": (4, 1259), "focal_flair_hyper": (5, 751), "intra": (6, 1721), "normal": (7, 27374),
    "pituitary_lesion": (8, 83), "white_matter_changes": (9, 10266),
}
ALIASES = {"pituatary_lesion": "pituitary_lesion"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
#: RadImageNet's training / validation / test proportions
SPLIT_FRACTIONS = (0.75, 0.10, 0.15)
DEFAULT_RESOLUTIONS = (224,)
REQUIRED_SPLITS = ("training", "validation", "test")
CLASSES = tuple(range(10))


def class_key(folder: str) -> str:
    """Normalized folder name (``Pituitary lesion`` -> ``pituitary_lesion``)."""
    key = re.sub(r"[\s\-]+", "_", folder.strip().lower())
    return ALIASES.get(key, key)


def find_images(root: Path) -> dict[str, list[Path]]:
    """``{class folder: [image files]}`` under ``root`` (the modality folder); DataError for unknown folders."""
    if not root.is_dir():
        raise DataError(root, "RadImageNet brain MRI folder not found (one sub-folder per class expected; "
                              "--modality-dir names it relative to the raw folder)")
    found: dict[str, list[Path]] = {}
    unknown = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        key = class_key(d.name)
        if key not in CLASS_FOLDERS:
            unknown.append(d.name)
            continue
        if key in found:
            raise DataError(d, f"two folders for class {key!r}")
        found[key] = sorted(p for p in d.rglob("*") if p.is_file())
    if unknown:
        raise DataError(root, f"unknown class folder(s) {unknown}; expected {sorted(CLASS_FOLDERS)}")
    if not found:
        raise DataError(root, f"no class folders; expected {sorted(CLASS_FOLDERS)}")
    return found


def stratified_split(ids_by_class: dict[str, list[str]], seed: int,
                     fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, str]:
    """``{id: split}``: each class split in ``fractions`` (seeded), every split at least one image of a class
    with >= 3 images (taken from the largest split)."""
    import numpy as np

    assign: dict[str, str] = {}
    for c, key in enumerate(sorted(ids_by_class)):
        ids = sorted(ids_by_class[key])
        counts = split_counts(len(ids), fractions)
        if len(ids) >= len(counts):
            for i, n in enumerate(counts):
                if n == 0:
                    counts[int(np.argmax(counts))] -= 1
                    counts[i] = 1
        order = np.random.default_rng([seed, c]).permutation(len(ids))
        start = 0
        for name, n in zip(REQUIRED_SPLITS, counts):
            for i in order[start:start + n]:
                assign[ids[i]] = name
            start += n
    return assign


#: ``monai-ext prepare radimagenet_brain`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of("--resolutions", type=int, nargs="+", default=list(DEFAULT_RESOLUTIONS),
              help="square output sizes in pixels (default: 224)"),
    Option.of("--modality-dir", default=MODALITY_DIR, help="class folders' parent, relative to the raw folder "
                                                           "(default: MR/brain)"),
    Option.of("--workers", type=int, default=1, help="worker processes"),
)


def prepare(raw: Path, out: Path, overwrite: bool = False, seed: int = 0,
            resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, modality_dir: str = MODALITY_DIR,
            workers: int = 1) -> dict[str, Any]:
    """Prepare RadImageNet brain MRI (see the module docstring). Returns the datalist (``datalist.json``)."""
    raw, out = Path(raw), Path(out)
    resolutions = [int(r) for r in resolutions]
    if not resolutions or min(resolutions) < 8:
        raise ValueError(f"resolutions must be sizes >= 8 px, got {resolutions}")
    files = find_images(raw / modality_dir)
    check_settings(out, {"square": "pad", "modality_dir": modality_dir}, overwrite)
    skips = SkipLog()
    source, labels = {}, {}
    ids_by_class: dict[str, list[str]] = {}
    duplicated: set[str] = set()
    for key, paths in files.items():
        for p in paths:
            if p.suffix not in IMAGE_SUFFIXES:
                skips.add(p.name, DataError(p, f"not an image file (suffix {p.suffix!r}; expected "
                                               f"{sorted(set(s.lower() for s in IMAGE_SUFFIXES))})"))
                continue
            cid = f"{key}/{p.stem}"
            if cid in source or cid in duplicated:
                skips.add(p.name, DataError(p, f"image name {p.stem!r} more than once in class {key!r}; all "
                                               "copies kept out"))
                duplicated.add(cid)
                source.pop(cid, None)
                labels.pop(cid, None)
                continue
            source[cid], labels[cid] = p, CLASS_FOLDERS[key][0]
    cases = [photo_case(cid, p, out, resolutions, "brain MRI slice") for cid, p in source.items()]
    ready = prepare_photos(cases, skips, workers=workers, square="pad", fov=False, desc="brain MRI images",
                           overwrite=overwrite)
    for cid in sorted(ready):
        ids_by_class.setdefault(cid.split("/")[0], []).append(cid)
    assign = stratified_split(ids_by_class, seed)
    datalist: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for cid in sorted(ready):
        entry: dict[str, Any] = {"image": f"images_{resolutions[0]}/{cid}.png"}
        entry.update({f"image_{r}": f"images_{r}/{cid}.png" for r in resolutions})
        entry.update({"label": labels[cid], "class_name": cid.split("/")[0],
                      "source": str(source[cid].relative_to(raw))})
        datalist[assign[cid]].append(entry)
    meta = {"dataset": "radimagenet_brain", "num_classes": 10,
            "classes": {str(v[0]): k for k, v in CLASS_FOLDERS.items()}, "split": "stratified per class",
            "split_fractions": list(SPLIT_FRACTIONS), "resolutions": resolutions, "seed": seed,
            "data_origin": data_origin(raw)}
    write_resolution_datalists(out, datalist, meta, resolutions)
    skips.write(out)
    return datalist
