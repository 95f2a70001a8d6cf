"""Synthetic BTCV: abdominal CT volumes with the 13 organ labels, in the real BTCV layout.

:func:`synthesize` writes ``imagesTr``/``labelsTr``/``imagesTs`` as :mod:`monai_ext.data.btcv` reads them
(:func:`synth_case` says what one volume models); case ids follow the canonical split (:func:`synthetic_case_ids`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm import tqdm

from monai_ext.data.btcv import TEST_IDS, TRAIN_IDS, VAL_IDS, save_nifti
from monai_ext.data.common import write_synthetic_marker
from monai_ext.data.dataset import Option

logger = logging.getLogger(__name__)

#: voxels per synthetic volume (small, for CPU)
DEFAULT_SYNTH_SIZE = (64, 64, 24)


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
    ribs = (
        (rho <= wall_in - 0.01) & (rho >= wall_in - 0.07) & (Y < 60) & (np.sin(Z / 25 * 2 * np.pi) > 0.55) & (Z > -30)
    )
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


#: ``monai-ext synth btcv`` options (keywords of :func:`synthesize`)
SYNTH_OPTIONS = (
    Option.of(
        "--size",
        type=int,
        nargs=3,
        default=list(DEFAULT_SYNTH_SIZE),
        metavar=("X", "Y", "Z"),
        help="voxels per volume (default %(default)s; 512 512 96 for BTCV-like spacing)",
    ),
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
            save_nifti(hu, affine, out / "imagesTr" / f"img{name}.nii.gz")
            save_nifti(label, affine, out / "labelsTr" / f"label{name}.nii.gz")
        else:
            save_nifti(hu, affine, out / "imagesTs" / f"img{name}.nii.gz")
    write_synthetic_marker(out, "btcv", cases, seed, size=[int(s) for s in size])
    logger.info(
        "synthetic BTCV: %d labelled + %d test volumes of %s in %s", len(train_ids), len(test_ids), tuple(size), out
    )
