"""BTCV (Beyond the Cranial Vault) abdominal CT, 13 organs: the real layout and its preparation.

Real layout (as distributed with MONAI's tutorials; the Synapse ``RawData`` zip holds the
same files under ``Training/img``, ``Training/label``)::

    <raw>/imagesTr/img0001.nii.gz ...   CT in HU, 512 x 512 x D (85 ... 198 slices)
    <raw>/labelsTr/label0001.nii.gz ... 0 background, 1 ... 13 organs (:data:`LABELS`)
    <raw>/imagesTs/img0061.nii.gz ...   unlabelled test CT
    <raw>/dataset_0.json                optional, decathlon style (``training``/``validation``/``test``)

Split: ``dataset_0.json`` when present; else the canonical split by case id (training
0001-0010, 0021-0034; validation 0035-0040, as in ``dataset_0.json``), the cases of
``imagesTs`` as ``test`` (images only). Labelled cases with other ids (not in real BTCV, e.g.
from a larger synthetic set) are split 24:6 between training and validation, deterministically
for ``--seed`` (:func:`monai_ext.data.common.grouped_split`).

Protocol (``--protocol``): ``24-6`` (default) keeps that split: the 6 validation cases both select the
checkpoint and give the reported numbers (Swin-UNETR's common protocol: *validation* numbers). ``heldout``
moves a seeded quarter of the training cases (6 of the canonical 24) to a labelled ``test`` split that is
never used for selection (18 training / 6 validation / 6 test); the unlabelled CT then go to ``unlabelled``.

:func:`prepare` checks every case (readable NIfTI, 3D, image/label shapes equal, affines equal
within ``affine_tol`` mm, label values integers in 0..13), reorients to ``RAS`` (option),
optionally resamples to a spacing, resizes to ``size`` (``-1`` keeps an axis; default 64 x 64 in
plane, all slices, small for CPU) and writes ``imagesTr/``, ``labelsTr/``, ``imagesTs/`` NIfTI
(image int16 HU, label uint8, affine updated) plus ``datalist.json`` and ``skipped.json``.

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.btcv`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_ext.data.common import (
    DataError,
    SkipLog,
    check_image_content,
    data_origin,
    grouped_split,
    write_datalist,
)
from monai_ext.data.dataset import Option, moved_attribute
from monai_ext.data.limits import check_nifti_header
from monai_ext.data.runner import check_settings, run_cases

logger = logging.getLogger(__name__)

#: BTCV label values and names (``0`` background)
LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
NUM_CLASSES = len(LABELS)  # 14 with background

#: canonical split of the 30 labelled BTCV cases (MONAI's ``dataset_0.json``)
TRAIN_IDS: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 35))
VAL_IDS: tuple[int, ...] = tuple(range(35, 41))
#: ids of the 20 unlabelled test cases
TEST_IDS: tuple[int, ...] = tuple(range(61, 81))

DATASET_JSON = "dataset_0.json"
#: ``--protocol`` values: the common 24 / 6 split (validation numbers) or a held-out labelled test split
PROTOCOLS = ("24-6", "heldout")
DEFAULT_SIZE = (64, 64, -1)
#: splits a usable prepared BTCV folder needs (``test`` holds unlabelled CT only) and its classes (none:
#: segmentation); checked by ``monai-ext prepare`` (:func:`monai_ext.data.common.check_splits`)
REQUIRED_SPLITS = ("training", "validation")
CLASSES = None
_CASE_RE = re.compile(r"(\d+)(?=\.nii(\.gz)?$)")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def nifti_stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def case_id(path: str | Path) -> str:
    """``img0001.nii.gz`` -> ``"0001"`` (the file stem when it carries no number)."""
    m = _CASE_RE.search(Path(path).name)
    return m.group(1) if m else nifti_stem(path)


@functools.lru_cache(maxsize=4)
def _loader(dtype: Any):
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    return LoadImage(reader=NibabelReader(), image_only=True, dtype=dtype)


def read_volume(path: str | Path, dtype: Any = np.float32):
    """Read a 3D NIfTI volume through MONAI's ``LoadImage`` (``NibabelReader``).

    Returns a ``MetaTensor`` of shape ``(1, X, Y, Z)`` whose ``affine`` maps voxels to RAS mm
    (nibabel convention). ``dtype=None`` keeps the stored data type (used for labels).
    Raises :class:`DataError` naming the file when it cannot be read or is not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    check_nifti_header(path, out_itemsize=np.dtype(dtype).itemsize if dtype is not None else 0)  # before decoding
    try:
        img = _loader(dtype)(str(path))
    except Exception as e:  # nibabel / gzip / zlib errors on truncated or foreign files
        raise DataError(path, f"cannot read NIfTI ({type(e).__name__}: {e})") from e
    while img.ndim > 3 and img.shape[-1] == 1:  # (X, Y, Z, 1) stored as 4D
        img = img[..., 0]
    if img.ndim != 3:
        raise DataError(path, f"expected a 3D volume, got shape {tuple(img.shape)}")
    return img[None]


def check_pair(image, label, image_path: Path, label_path: Path, affine_tol: float) -> None:
    """Raise :class:`DataError` unless ``label`` fits ``image`` and holds BTCV label values."""
    if tuple(image.shape) != tuple(label.shape):
        raise DataError(
            label_path,
            f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])} "
            f"of {image_path.name}",
        )
    a_img = np.asarray(image.affine, dtype=float)
    a_lbl = np.asarray(label.affine, dtype=float)
    diff = float(np.abs(a_img - a_lbl).max())
    if diff > affine_tol:
        raise DataError(
            label_path,
            f"label affine differs from the affine of {image_path.name} by {diff:.4g} (> {affine_tol} mm): "
            f"image {np.round(a_img[:3], 4).tolist()} vs label {np.round(a_lbl[:3], 4).tolist()}",
        )
    values = np.unique(np.asarray(label))
    bad = values[(values < 0) | (values > NUM_CLASSES - 1) | (values != np.round(values))]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:8])
        raise DataError(label_path, f"label values outside the integers 0..{NUM_CLASSES - 1}: {shown}")


# --------------------------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------------------------


@dataclass
class _Case:
    case: str
    split: str
    image: Path
    label: Path | None


def _entries_from_dataset_json(raw: Path, skips: SkipLog) -> list[_Case]:
    path = raw / DATASET_JSON
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read decathlon datalist ({e})") from e
    cases: list[_Case] = []
    listed: set[Path] = set()
    for split in ("training", "validation", "test"):
        for item in spec.get(split, []):
            if isinstance(item, str):
                item = {"image": item}
            if "image" not in item:
                raise DataError(path, f"entry without 'image' in {split!r}: {item}")
            image = (raw / item["image"]).resolve()
            label = (raw / item["label"]).resolve() if item.get("label") else None
            listed.add(image)
            cases.append(_Case(case_id(image), split, image, label))
    for image in sorted((raw / "imagesTr").glob("*.nii*")):
        if image.resolve() not in listed:
            skips.add(case_id(image), f"in imagesTr but not listed in {DATASET_JSON}", image)
    return cases


def _entries_from_layout(raw: Path, seed: int, skips: SkipLog) -> list[_Case]:
    images = sorted((raw / "imagesTr").glob("*.nii*"))
    labels = {case_id(p): p for p in sorted((raw / "labelsTr").glob("*.nii*"))}
    labelled: list[tuple[str, Path, Path]] = []
    for image in images:
        cid = case_id(image)
        if cid not in labels:
            skips.add(cid, f"no label file for this image in {raw / 'labelsTr'}", image)
            continue
        labelled.append((cid, image, labels.pop(cid)))
    for cid, label in labels.items():
        skips.add(cid, f"label without an image in {raw / 'imagesTr'}", label)

    def canonical(cid: str) -> str | None:
        n = int(cid) if cid.isdigit() else None
        return "training" if n in TRAIN_IDS else "validation" if n in VAL_IDS else None

    others = [cid for cid, _, _ in labelled if canonical(cid) is None]
    extra = grouped_split(others, fractions=(len(TRAIN_IDS), len(VAL_IDS), 0), seed=seed) if others else {}
    if others:
        logger.info("%d case id(s) outside the canonical BTCV split, split 24:6 with seed %d", len(others), seed)
    cases = [_Case(cid, canonical(cid) or extra[cid], image, label) for cid, image, label in labelled]
    cases += [_Case(case_id(p), "test", p, None) for p in sorted((raw / "imagesTs").glob("*.nii*"))]
    return cases


def _hold_out(cases: list[_Case], seed: int) -> list[_Case]:
    """``heldout`` protocol: a seeded quarter of the labelled ``training`` cases (6 of 24) -> ``test``; the
    unlabelled ``test`` cases -> ``unlabelled``. Validation (checkpoint selection) is unchanged."""
    train = [c.case for c in cases if c.split == "training" and c.label is not None]
    held = {k for k, v in grouped_split(train, fractions=(18, 0, 6), seed=seed).items() if v == "test"}
    out = []
    for c in cases:
        split = "unlabelled" if c.label is None else "test" if c.case in held else c.split
        out.append(_Case(c.case, split, c.image, c.label))
    logger.info("held-out protocol: %d of %d training case(s) form the labelled test split (seed %d)",
                len(held), len(train), seed)
    return out


def discover(raw: Path, seed: int = 0, skips: SkipLog | None = None, protocol: str = "24-6") -> list[_Case]:
    """The cases of a BTCV folder with their split (``dataset_0.json`` or canonical ids; ``protocol``:
    ``24-6`` as found, ``heldout`` with a labelled test split carved from training, see the module docstring)."""
    raw = Path(raw)
    skips = SkipLog() if skips is None else skips
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not raw.is_dir():
        raise DataError(raw, "dataset folder not found")
    if (raw / DATASET_JSON).is_file():
        logger.info("split from %s", raw / DATASET_JSON)
        cases = _entries_from_dataset_json(raw, skips)
    elif not (raw / "imagesTr").is_dir():
        raise DataError(raw, f"neither {DATASET_JSON} nor an imagesTr/ folder found (BTCV layout expected)")
    else:
        cases = _entries_from_layout(raw, seed, skips)
    return _hold_out(cases, seed) if protocol == "heldout" else cases


def _transforms(orientation: str | None, spacing: Sequence[float] | None, size: Sequence[int], label: bool):
    from monai.transforms import Compose, Orientation, Resize, Spacing

    ts: list = []
    if orientation:
        ts.append(Orientation(axcodes=orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spacing:
        ts.append(Spacing(pixdim=tuple(spacing), mode="nearest" if label else "bilinear"))
    if any(s > 0 for s in size):
        if label:
            ts.append(Resize(spatial_size=tuple(size), mode="nearest"))
        else:
            ts.append(Resize(spatial_size=tuple(size), mode="trilinear", anti_aliasing=True))
    return Compose(ts)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """``array`` as NIfTI with ``affine`` as qform and sform, written under a temporary name and renamed."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{nifti_stem(path)}.partial.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


def _prepare_case(
    c: _Case, out: Path, orientation: str | None, spacing, size, affine_tol: float, overwrite: bool
) -> dict[str, str]:
    stem = nifti_stem(c.image)
    img_dir = "imagesTs" if c.label is None else "imagesTr"
    out_img = out / img_dir / f"{stem}.nii.gz"
    out_lbl = out / "labelsTr" / f"{nifti_stem(c.label)}.nii.gz" if c.label is not None else None
    entry = {"image": str(out_img.relative_to(out)), "case": c.case}
    if out_lbl is not None:
        entry["label"] = str(out_lbl.relative_to(out))
    if not overwrite and out_img.exists() and (out_lbl is None or out_lbl.exists()):
        return entry

    image = read_volume(c.image)
    check_image_content(image, c.image, "CT volume")
    label = None
    if c.label is not None:
        label = read_volume(c.label, dtype=None)
        check_pair(image, label, c.image, c.label, affine_tol)
    image = _transforms(orientation, spacing, size, label=False)(image)
    arr = np.clip(np.rint(np.asarray(image[0], dtype=np.float32)), -32768, 32767).astype(np.int16)
    out_img.parent.mkdir(parents=True, exist_ok=True)
    if label is not None:
        label = _transforms(orientation, spacing, size, label=True)(label.float())
        out_lbl.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(np.rint(np.asarray(label[0])).astype(np.uint8), np.asarray(label.affine, float), out_lbl)
    save_nifti(arr, np.asarray(image.affine, float), out_img)
    return entry


#: ``monai-ext prepare btcv`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of(
        "--size",
        type=int,
        nargs=3,
        default=list(DEFAULT_SIZE),
        metavar=("X", "Y", "Z"),
        help="output size in voxels after reorientation; -1 keeps an axis (-1 -1 -1: as-is); default %(default)s",
    ),
    Option.of(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="resample to this spacing in mm before --size (default: keep)",
    ),
    Option.of(
        "--orientation",
        default="RAS",
        help="axis codes to reorient to (default RAS); 'none' keeps the stored orientation",
    ),
    Option.of(
        "--affine-tol",
        type=float,
        default=1e-2,
        help="largest allowed difference (mm) between image and label affines (default %(default)s)",
    ),
    Option.of(
        "--protocol",
        choices=PROTOCOLS,
        default="24-6",
        help="24-6 (default): training / validation as in dataset_0.json, reported numbers are validation numbers; "
        "heldout: 6 of the 24 training cases form a labelled test split never used for checkpoint selection",
    ),
    Option.of("--workers", type=int, default=1, help="worker processes (default 1)"),
)


def prepare(
    raw: Path,
    out: Path,
    overwrite: bool = False,
    seed: int = 0,
    size: Sequence[int] = DEFAULT_SIZE,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    affine_tol: float = 1e-2,
    workers: int = 1,
    protocol: str = "24-6",
) -> dict:
    """Prepare a BTCV folder (real or synthetic) into ``out``; returns the datalist.

    ``size``: output voxels per axis after reorientation/resampling (``-1`` keeps an axis). ``protocol``:
    ``24-6`` or ``heldout`` (labelled ``test`` split, unlabelled CT under ``unlabelled``; see the module docstring).
    """
    raw, out = Path(raw), Path(out)
    if orientation is not None and orientation.lower() == "none":
        orientation = None
    size = [int(s) for s in size]
    if len(size) != 3 or any(s == 0 or s < -1 for s in size):
        raise ValueError(f"size must be 3 positive integers or -1, got {size}")
    settings = {"size": size, "spacing": [float(v) for v in spacing] if spacing else None, "orientation": orientation}
    if protocol != "24-6":  # recorded only when not the default, so earlier prepared folders stay valid
        settings["protocol"] = protocol
    check_settings(out, settings, overwrite)

    skips = SkipLog()
    cases = discover(raw, seed=seed, skips=skips, protocol=protocol)
    out.mkdir(parents=True, exist_ok=True)
    worker = functools.partial(
        _prepare_case,
        out=out,
        orientation=orientation,
        spacing=settings["spacing"],
        size=size,
        affine_tol=affine_tol,
        overwrite=overwrite,
    )
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    if protocol == "heldout":
        datalist["unlabelled"] = []
    for c, entry, error in run_cases(worker, cases, workers=workers, desc="BTCV cases"):
        if error is not None:
            skips.add(c.case, error, path=None if isinstance(error, DataError) else c.image)
        else:
            datalist[c.split].append(entry)
    for entries in datalist.values():
        entries.sort(key=lambda e: e["case"])
    skips.write(out)
    write_datalist(
        out,
        datalist,
        dataset="btcv",
        labels={str(k): v for k, v in LABELS.items()},
        settings=settings,
        seed=seed,
        data_origin=data_origin(raw),
    )
    return datalist


#: generator names that moved to :mod:`monai_ext.data.synthetic.btcv` (still found here, with a DeprecationWarning)
_MOVED = ("synthesize", "synth_case", "synthetic_case_ids", "DEFAULT_SYNTH_SIZE")


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, "monai_ext.data.synthetic.btcv", _MOVED, name)
