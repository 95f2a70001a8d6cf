"""BTCV (Beyond the Cranial Vault) abdominal CT, 13 organs: preparation and a synthetic generator.

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

:func:`prepare` checks every case (readable NIfTI, 3D, image/label shapes equal, affines equal
within ``affine_tol`` mm, label values integers in 0..13), reorients to ``RAS`` (option),
optionally resamples to a spacing, resizes to ``size`` (``-1`` keeps an axis; default 64 x 64 in
plane, all slices, small for CPU) and writes ``imagesTr/``, ``labelsTr/``, ``imagesTs/`` NIfTI
(image int16 HU, label uint8, affine updated) plus ``datalist.json`` and ``skipped.json``.

:func:`synthesize` writes the same raw layout: see :func:`synth_case` for what it models.
"""

from __future__ import annotations

import argparse
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
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm import tqdm

from monai_ext.data.common import (
    DataError,
    SkipLog,
    check_image_content,
    data_origin,
    grouped_split,
    write_datalist,
    write_synthetic_marker,
)
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
DEFAULT_SIZE = (64, 64, -1)
DEFAULT_SYNTH_SIZE = (64, 64, 24)
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


def discover(raw: Path, seed: int = 0, skips: SkipLog | None = None) -> list[_Case]:
    """The cases of a BTCV folder with their split (``dataset_0.json`` or canonical ids)."""
    raw = Path(raw)
    skips = SkipLog() if skips is None else skips
    if not raw.is_dir():
        raise DataError(raw, "dataset folder not found")
    if (raw / DATASET_JSON).is_file():
        logger.info("split from %s", raw / DATASET_JSON)
        return _entries_from_dataset_json(raw, skips)
    if not (raw / "imagesTr").is_dir():
        raise DataError(raw, f"neither {DATASET_JSON} nor an imagesTr/ folder found (BTCV layout expected)")
    return _entries_from_layout(raw, seed, skips)


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


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
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
        _save_nifti(np.rint(np.asarray(label[0])).astype(np.uint8), np.asarray(label.affine, float), out_lbl)
    _save_nifti(arr, np.asarray(image.affine, float), out_img)
    return entry


def add_prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=list(DEFAULT_SIZE),
        metavar=("X", "Y", "Z"),
        help="output size in voxels after reorientation; -1 keeps an axis (-1 -1 -1: as-is); default %(default)s",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="resample to this spacing in mm before --size (default: keep)",
    )
    parser.add_argument(
        "--orientation",
        default="RAS",
        help="axis codes to reorient to (default RAS); 'none' keeps the stored orientation",
    )
    parser.add_argument(
        "--affine-tol",
        type=float,
        default=1e-2,
        help="largest allowed difference (mm) between image and label affines (default %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")


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
) -> dict:
    """Prepare a BTCV folder (real or synthetic) into ``out``; returns the datalist.

    ``size``: output voxels per axis after reorientation/resampling (``-1`` keeps an axis).
    """
    raw, out = Path(raw), Path(out)
    if orientation is not None and orientation.lower() == "none":
        orientation = None
    size = [int(s) for s in size]
    if len(size) != 3 or any(s == 0 or s < -1 for s in size):
        raise ValueError(f"size must be 3 positive integers or -1, got {size}")
    settings = {"size": size, "spacing": [float(v) for v in spacing] if spacing else None, "orientation": orientation}
    check_settings(out, settings, overwrite)

    skips = SkipLog()
    cases = discover(raw, seed=seed, skips=skips)
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


# --------------------------------------------------------------------------------------------
# synthetic BTCV
# --------------------------------------------------------------------------------------------


def synthetic_case_ids(cases: int) -> tuple[list[int], list[int]]:
    """Case ids a synthetic set of ``cases`` labelled volumes uses: real BTCV ids, in the
    canonical 24:6 proportion (at least one validation case from 2 cases up), then ids from 41
    on beyond 30 cases. Also returns the unlabelled test ids (one per six cases, at least one)."""
    n_val = min(len(VAL_IDS), max(1 if cases >= 2 else 0, round(cases * len(VAL_IDS) / 30)))
    n_train = min(len(TRAIN_IDS), cases - n_val)
    ids = list(TRAIN_IDS[:n_train]) + list(VAL_IDS[:n_val])
    ids += list(range(41, 41 + cases - len(ids)))
    n_test = min(len(TEST_IDS), max(1, cases // 6))
    return ids, list(TEST_IDS[:n_test])


class _Body:
    """Voxel grid in body coordinates (mm; x to the patient's right, y anterior, z superior;
    origin in the mid abdomen), painted organ by organ."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        self.x, self.y, self.z = x, y, z  # 1D coordinates of the voxel centres per axis
        shape = (x.size, y.size, z.size)
        self.hu = np.full(shape, -1000.0, np.float32)
        self.label = np.zeros(shape, np.uint8)
        self.spacing = np.abs([x[1] - x[0], y[1] - y[0], z[1] - z[0]])

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
        out = []
        for axis, a, b in zip((self.x, self.y, self.z), lo, hi):
            idx = np.flatnonzero((axis >= a) & (axis <= b))
            if idx.size == 0:
                return None
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            self.x[sl[0]][:, None, None],
            self.y[sl[1]][None, :, None],
            self.z[sl[2]][None, None, :],
        )

    def full(self) -> tuple[slice, slice, slice]:
        return (slice(None), slice(None), slice(None))

    def paint(self, sl, mask: np.ndarray, hu: float | np.ndarray, label: int | None = None) -> None:
        if sl is None:
            return
        region = self.hu[sl]
        region[mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        if label is not None:
            self.label[sl][mask] = label


def _blob(body: _Body, rng, center, semi, angle_deg: float = 0.0, wobble: float = 0.12, sl=None):
    """Deformed ellipsoid: (slices, mask). ``angle_deg`` rotates about the z axis; ``sl``
    evaluates it on a given box (e.g. an inner part of an organ already painted)."""
    center, semi = np.asarray(center, float), np.asarray(semi, float)
    reach = semi.max() * (1.0 + 2 * wobble)
    if sl is None:
        sl = body.box(center - reach, center + reach)
    if sl is None:
        return None, None
    X, Y, Z = body.coords(sl)
    t = np.deg2rad(angle_deg)
    dx, dy, dz = X - center[0], Y - center[1], Z - center[2]
    u = (np.cos(t) * dx + np.sin(t) * dy) / semi[0]
    v = (-np.sin(t) * dx + np.cos(t) * dy) / semi[1]
    w = dz / semi[2]
    r = np.sqrt(u**2 + v**2 + w**2)
    bump = np.zeros_like(r)
    for _ in range(3):  # low-frequency surface deformation
        f = rng.normal(size=3) * 1.6
        bump = bump + np.sin(f[0] * u + f[1] * v + f[2] * w + rng.uniform(0, 2 * np.pi))
    return sl, (r + wobble * bump / 3) <= 1.0


def _tube(body: _Body, points, radius: float, step: float = 1.0):
    """Tube of ``radius`` mm around the polyline through ``points`` (body coordinates)."""
    pts = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    t = np.arange(0, s[-1] + step, step)
    line = np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], axis=1)
    sl = body.box(line.min(0) - radius - 1, line.max(0) + radius + 1)
    if sl is None:
        return None, None
    X, Y, Z = body.coords(sl)
    grid = np.stack(np.broadcast_arrays(X, Y, Z), axis=-1).reshape(-1, 3)
    d, _ = cKDTree(line).query(grid, distance_upper_bound=radius + step)
    shape = (X.shape[0], Y.shape[1], Z.shape[2])
    return sl, (d <= radius).reshape(shape)


def _texture(rng, shape, sigma: float, amp: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma)
    n /= n.std() + 1e-6
    return amp * n


def synth_case(rng: np.random.Generator, size: Sequence[int] = DEFAULT_SYNTH_SIZE):
    """One synthetic abdominal CT: ``(hu int16 (X, Y, Z), label uint8 (X, Y, Z), affine 4x4)``.

    What it models:

    - geometry: axial slices stored like converted DICOM (voxel axes to patient Left,
      Posterior, Superior; ``aff2axcodes == ('L', 'P', 'S')``), a field of view of 360-420 mm
      in plane and 220-260 mm along z (so ``size=(512, 512, 96)`` gives BTCV-like 0.7-0.8 mm
      pixels and ~2.5 mm slices; the small CPU default gives coarse voxels of the same anatomy),
      scanner-like origins (table position);
    - anatomy in mm: body wall (subcutaneous fat, muscle), spine and ribs, paraspinal and psoas
      muscles, bowel loops with gas (unlabelled), and the 13 BTCV organs at their usual places
      (liver right upper, spleen left posterior, kidneys beside the spine, adrenals above them,
      pancreas head to tail across the midline, stomach left anterior with a gas cap, aorta left
      of the midline before the spine, IVC right, portal and splenic veins, esophagus joining
      the stomach); per case random size, position, rotation and smooth shape deformation;
    - intensities in HU of a portal-venous phase CT with per-case contrast timing, organ texture,
      partial-volume blur and noise; neighbours with similar HU (liver/spleen, adrenals/muscle
      /esophagus/bowel, unlabelled vessels) so position and shape must be learnt too.
    """
    W, H, D = (int(s) for s in size)
    fov = rng.uniform(360, 420)
    fov_z = rng.uniform(220, 260)
    sx, sz = fov / W, fov_z / D
    shift = np.array([rng.uniform(-12, 12), rng.uniform(-8, 8), rng.uniform(-15, 15)])
    # body coordinates of the voxel centres: i runs right -> left, j anterior -> posterior
    x = (W - 1) / 2 * sx - np.arange(W) * sx + shift[0]
    y = (H - 1) / 2 * sx - np.arange(H) * sx + shift[1]
    z = -(D - 1) / 2 * sz + np.arange(D) * sz + shift[2]
    # world (scanner) = body + table offset; nibabel affine maps voxels to RAS world mm
    table = np.array([rng.uniform(-10, 10), rng.uniform(-200, -150), rng.uniform(-650, -350)])
    affine = np.array(
        [
            [-sx, 0, 0, x[0] + table[0]],
            [0, -sx, 0, y[0] + table[1]],
            [0, 0, sz, z[0] + table[2]],
            [0, 0, 0, 1],
        ]
    )
    body = _Body(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))
    k = rng.uniform(0.9, 1.1)  # patient size
    contrast = rng.uniform(0.8, 1.2)  # enhancement (contrast timing)

    def enh(hu: float) -> float:  # enhanced tissue scales above ~40 HU
        return 40 + (hu - 40) * contrast if hu > 40 else hu

    def jit(c, s=5.0):
        return np.asarray(c, float) * k + rng.normal(0, s, 3)

    def semi(a):
        return np.asarray(a, float) * k * rng.uniform(0.85, 1.15, 3)

    full = body.full()
    X, Y, Z = body.coords(full)
    ax, ay = 165 * k * rng.uniform(0.9, 1.05), 120 * k * rng.uniform(0.9, 1.05)
    rho = np.sqrt((X / ax) ** 2 + ((Y + 10) / ay) ** 2) * np.ones_like(Z)
    fat = rng.uniform(12, 28)
    body.paint(full, rho <= 1, -100.0)  # subcutaneous fat
    wall_in = 1 - fat / ay
    body.paint(full, rho <= wall_in, 50.0)  # muscle wall
    cavity = rho <= wall_in - 10 / ay
    body.paint(full, cavity, -90.0)  # visceral fat
    # ribs: arcs inside the wall in the upper abdomen, every ~25 mm
    ribs = (rho <= wall_in - 0.01) & (rho >= wall_in - 0.07) & (Y < 60) & (np.sin(Z / 25 * 2 * np.pi) > 0.55) & (Z > -30)
    body.paint(full, ribs, 550.0)
    # spine: vertebral body, cortex, canal; paraspinal and psoas muscles
    vx, vy = rng.normal(0, 3), -70 * k
    rv = np.sqrt((X - vx) ** 2 + (Y - vy) ** 2) * np.ones_like(Z)
    body.paint(full, rv <= 22 * k, 700.0)
    body.paint(full, rv <= 19 * k, 250.0)
    canal = np.sqrt((X - vx) ** 2 + (Y - vy + 34 * k) ** 2) * np.ones_like(Z)
    body.paint(full, canal <= 10 * k, 700.0)
    body.paint(full, canal <= 7 * k, 20.0)
    for side in (-1, 1):
        m = (((X - side * 38 * k) / (24 * k)) ** 2 + ((Y - vy + 40 * k) / (18 * k)) ** 2) * np.ones_like(Z) <= 1
        body.paint(full, m & cavity, 50.0)
        psoas_r = np.clip(-Z / 6, 0, 22) * k
        m = np.sqrt((X - side * 32 * k) ** 2 + (Y - vy - 8 * k) ** 2) <= psoas_r
        body.paint(full, m & cavity, 52.0)
    # bowel loops (unlabelled): soft tissue with gas pockets, lower anterior abdomen
    for _ in range(int(rng.integers(4, 8))):
        c = [rng.uniform(-90, 90), rng.uniform(-10, 70), rng.uniform(-120, 10)]
        sl, m = _blob(body, rng, jit(c, 3), semi([30, 22, 30]), rng.uniform(0, 180), wobble=0.25)
        if sl is None:
            continue
        tex = 30 + _texture(rng, m.shape, 1.0, 12)
        tex[_texture(rng, m.shape, 1.5, 1.0) > 1.2] = -800
        body.paint(sl, m & cavity[sl], tex)

    def organ(label: int, sl, m, hu: float, tex_amp: float = 6.0):
        if sl is None:
            return
        m = m & cavity[sl]
        body.paint(sl, m, enh(hu) + _texture(rng, m.shape, 1.0, tex_amp), label)

    # liver (6): right lobe + left lobe, with unlabelled hepatic veins
    liver_hu = rng.uniform(95, 115)
    sl, m = _blob(body, rng, jit([55, 0, 45]), semi([80, 75, 68]), rng.uniform(-10, 10))
    organ(6, sl, m, liver_hu)
    sl, m = _blob(body, rng, jit([-10, 35, 60]), semi([55, 30, 35]), rng.uniform(-15, 15))
    organ(6, sl, m, liver_hu)
    for end in ([60, 40, 50], [85, -10, 40], [20, 45, 70]):
        sl, m = _tube(body, [jit([25, -30, 95], 2), jit(end, 6)], 4.0 * k)
        if sl is not None:
            body.paint(sl, m & (body.label[sl] == 6), enh(150.0))
    # gallbladder (4) under the liver, fluid
    sl, m = _blob(body, rng, jit([50, 42, -5]), semi([14, 16, 32]), rng.uniform(-30, 30), wobble=0.08)
    organ(4, sl, m, 12.0, 4.0)
    # spleen (1)
    sl, m = _blob(body, rng, jit([-85, -40, 45]), semi([22, 48, 48]), rng.uniform(20, 45))
    organ(1, sl, m, rng.uniform(105, 125))
    # kidneys (2 right, 3 left): cortex, medulla
    for lab, cx in ((2, 68), (3, -68)):
        c, s = jit([cx, -48, -12 if lab == 2 else -5]), semi([26, 24, 52])
        ang = rng.uniform(10, 30) * np.sign(cx)
        sl, m = _blob(body, rng, c, s, ang, wobble=0.06)
        organ(lab, sl, m, 185.0, 8.0)
        if sl is not None:
            _, m2 = _blob(body, rng, c + [-np.sign(cx) * 4, 0, 0], s * 0.6, ang, wobble=0.1, sl=sl)
            body.paint(sl, m2 & (body.label[sl] == lab), enh(125.0))
    # adrenals (12 right, 13 left): thin plates above the kidneys
    sl, m = _blob(body, rng, jit([36, -38, 50], 3), semi([4.5, 14, 18]), rng.uniform(-25, 5), wobble=0.1)
    organ(12, sl, m, 45.0)
    sl, m = _blob(body, rng, jit([-36, -32, 42], 3), semi([4.5, 14, 17]), rng.uniform(-5, 25), wobble=0.1)
    organ(13, sl, m, 45.0)
    # pancreas (11): head (right, by the duodenum) to tail (splenic hilum), lobulated
    path = [jit(p, 3) for p in ([32, 8, -8], [8, 18, 4], [-30, 8, 14], [-68, -22, 26])]
    sl, m = _tube(body, path, 11.0 * k)
    if sl is not None:
        lob = _texture(rng, m.shape, float(np.clip(3.0 / body.spacing.min(), 0.7, 3.0)), 1.0) > -1.2
        organ(11, sl, m & lob, 92.0, 10.0)
    # stomach (7): wall, fluid, gas cap anteriorly
    c, s = jit([-48, 32, 55]), semi([40, 34, 45])
    ang = rng.uniform(-20, 20)
    sl, m = _blob(body, rng, c, s, ang, wobble=0.1)
    if sl is not None:
        organ(7, sl, m, 60.0)
        _, lumen = _blob(body, rng, c, s * 0.75, ang, wobble=0.1, sl=sl)
        lumen = lumen & (body.label[sl] == 7)
        _, Ys, _ = body.coords(sl)
        gas = lumen & (Ys > c[1] + 0.25 * s[1])
        body.paint(sl, lumen, 15.0 + _texture(rng, m.shape, 1.0, 8))
        body.paint(sl, gas & (body.label[sl] == 7), -800.0)
    # esophagus (5): from the posterior mediastinum to the cardia
    sl, m = _tube(body, [jit([-5, -35, 140], 2), jit([-12, -25, 95], 3), jit([-30, 12, 72], 3)], 9.0 * k)
    organ(5, sl, m, 45.0)
    # portal vein and splenic vein (10)
    conf = jit([12, 2, 2], 3)
    sl, m = _tube(body, [conf, jit([45, 10, 35], 4)], 7.0 * k)
    organ(10, sl, m, 170.0, 4.0)
    sl, m = _tube(body, [conf, jit([-30, -12, 16], 4), jit([-70, -32, 30], 4)], 4.5 * k)
    organ(10, sl, m, 170.0, 4.0)
    # IVC (9) right of the spine, into the liver; aorta (8) left, with unlabelled branches
    ivc = [jit([24, -38, -140], 2), jit([26, -30, 20], 3), jit([25, -30, 100], 3)]
    sl, m = _tube(body, ivc, 11.0 * k)
    organ(9, sl, m, 140.0, 4.0)
    aorta = [jit([-10, -40, -140], 2), jit([-9, -33, 0], 2), jit([-6, -42, 140], 2)]
    sl, m = _tube(body, aorta, 12.0 * k)
    organ(8, sl, m, 190.0, 4.0)
    for zb, end in ((30, [-2, 10, 40]), (10, [0, 30, -40])):  # celiac trunk, superior mesenteric artery
        sl, m = _tube(body, [jit([-9, -25, zb], 2), jit(end, 5)], 3.5 * k)
        if sl is not None:
            body.paint(sl, m & (body.label[sl] == 0) & cavity[sl], enh(190.0))

    hu = ndimage.gaussian_filter(body.hu, 0.6)  # partial volume / reconstruction kernel
    hu += rng.normal(0, rng.uniform(8, 20), hu.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return hu, body.label, affine


def add_synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=list(DEFAULT_SYNTH_SIZE),
        metavar=("X", "Y", "Z"),
        help="voxels per volume (default %(default)s; 512 512 96 for BTCV-like spacing)",
    )


def synthesize(out: Path, cases: int = 12, seed: int = 0, size: Sequence[int] = DEFAULT_SYNTH_SIZE) -> None:
    """Write a synthetic BTCV folder (``imagesTr``/``labelsTr``/``imagesTs``, no ``dataset_0.json``,
    so the canonical split by case id applies). Each case is seeded by ``(seed, case id)``."""
    out = Path(out)
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    train_ids, test_ids = synthetic_case_ids(cases)
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    jobs = [(i, True) for i in train_ids] + [(i, False) for i in test_ids]
    for cid, labelled in tqdm(jobs, desc="btcv synth", unit="case"):
        rng = np.random.default_rng([seed, cid])
        hu, label, affine = synth_case(rng, size)
        name = f"{cid:04d}"
        if labelled:
            _save_nifti(hu, affine, out / "imagesTr" / f"img{name}.nii.gz")
            _save_nifti(label, affine, out / "labelsTr" / f"label{name}.nii.gz")
        else:
            _save_nifti(hu, affine, out / "imagesTs" / f"img{name}.nii.gz")
    write_synthetic_marker(out, "btcv", cases, seed, size=[int(s) for s in size])
    logger.info("synthetic BTCV: %d labelled + %d test volumes of %s in %s", len(train_ids), len(test_ids), tuple(size), out)
