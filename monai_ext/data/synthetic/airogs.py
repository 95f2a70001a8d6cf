"""Synthetic AIROGS: colour fundus photographs in the challenge layout (``train_labels.csv``, JPEGs in numbered
sub-folders), referable glaucoma (RG) carried by the cup-to-disc ratio.

Each photograph: a round field of view on black (cut at the top and bottom in some images), an orange-red retina
with vignetting and choroidal texture, a macula, an optic disc (yellow-orange, size varying per eye) on the nasal
side of a left or right eye, a pale cup inside it whose vertical diameter is the cup-to-disc ratio (CDR) times the
disc's, and vessel arcades leaving the disc across the rim and the cup; random illumination, colour, blur, noise,
JPEG quality. RG photographs have a larger CDR (N(0.72, 0.08) against N(0.42, 0.08) for NRG, overlapping) and
sometimes a vertically elongated cup (rim notch): absolute cup size says little because discs differ in size, so a
model has to relate cup to disc.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monai_ext.data.airogs import CLASS_COLUMN, ID_COLUMN, LABELS_CSV
from monai_ext.data.common import atomic_path, write_synthetic_marker
from monai_ext.data.dataset import Option

#: prevalence of RG in the AIROGS training set (3,270 of 101,442)
REAL_RG_FRACTION = 0.0322
SUBFOLDERS = 6


def _soft_ellipse(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, rx: float, ry: float, edge: float) -> np.ndarray:
    """1 inside the ellipse, 0 outside, a linear ramp ``edge`` (in radii) wide across the border."""
    d = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)
    return np.clip((1 + edge / 2 - d) / edge, 0, 1)


def _vessel(rng: np.random.Generator, start: tuple[float, float], angle: float, length: float,
            steps: int = 40) -> np.ndarray:
    """Points of a vessel: a random walk of the direction from ``start`` (pixels), ``(steps, 2)`` int32."""
    pts = [np.array(start, dtype=np.float64)]
    step = length / steps
    for _ in range(steps):
        angle += rng.normal(0, 0.08)
        pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    return np.round(np.array(pts)).astype(np.int32)


def synth_fundus(rng: np.random.Generator, cdr: float, notch: bool = False) -> np.ndarray:
    """A fundus photograph ``(H, W, 3)`` uint8 with the given vertical cup-to-disc ratio."""
    import cv2
    from scipy.ndimage import gaussian_filter

    W = int(rng.integers(320, 401))  # real photographs are larger; preparation resizes to a few hundred px anyway
    H = int(W * rng.uniform(0.72, 0.95))
    Y, X = np.mgrid[:H, :W].astype(np.float32)
    r = min(H, W) * rng.uniform(0.48, 0.56)  # > H/2: the circle is cut at the top and bottom
    cx, cy = W / 2 + rng.uniform(-0.03, 0.03) * W, H / 2 + rng.uniform(-0.03, 0.03) * H
    dist = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) / r
    fov = np.clip((1.0 - dist) * 40, 0, 1)
    base = np.array([rng.uniform(0.72, 0.92), rng.uniform(0.28, 0.42), rng.uniform(0.08, 0.18)], np.float32)
    texture = gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), rng.uniform(3, 8))
    texture /= texture.std() + 1e-6
    shade = (1 - 0.45 * dist**2) * (1 + 0.05 * texture)
    img = base[None, None] * shade[..., None]
    # eye side: the disc lies nasally (left eye: disc left of centre in the image)
    side = rng.choice([-1.0, 1.0])
    rd = r * rng.uniform(0.20, 0.26)  # disc radius: larger than anatomy (~0.14) so that CPU sizes resolve the cup
    dcx, dcy = cx + side * r * rng.uniform(0.22, 0.34), cy + r * rng.uniform(-0.08, 0.08)
    # macula: a darker region ~2.5 disc diameters temporal
    mac = _soft_ellipse(X, Y, dcx - side * 5 * rd, dcy + rd * 0.3, 1.6 * rd, 1.6 * rd, 1.5)
    img *= (1 - 0.3 * mac)[..., None]
    disc = _soft_ellipse(X, Y, dcx, dcy, rd, rd * rng.uniform(1.02, 1.15), 0.25)
    disc_col = np.array([1.0, rng.uniform(0.62, 0.78), rng.uniform(0.32, 0.48)], np.float32)
    img = img * (1 - disc[..., None]) + disc_col * (0.9 + 0.1 * texture[..., None]) * disc[..., None]
    # the cup: pale, centred slightly temporal; vertical radius = cdr x the disc's vertical radius
    cup_ry = cdr * rd * (rng.uniform(1.1, 1.25) if notch else rng.uniform(0.98, 1.05))
    cup_rx = cdr * rd * rng.uniform(0.85, 1.0)
    cup = _soft_ellipse(X, Y, dcx - side * rd * rng.uniform(0.0, 0.12), dcy, cup_rx, cup_ry, 0.35)
    cup_col = np.array([1.0, rng.uniform(0.86, 0.96), rng.uniform(0.7, 0.85)], np.float32)
    img = img * (1 - cup[..., None]) + cup_col * cup[..., None]
    # vessels: arcades up and down (temporal), thinner nasal branches; drawn darker, anti-aliased
    vessels = np.zeros((H, W), np.float32)
    arcades = [(-side, -1), (-side, 1), (side, -1), (side, 1)]
    for k, (dx, dy) in enumerate(arcades):
        for _ in range(int(rng.integers(1, 3))):
            angle = np.arctan2(dy * rng.uniform(0.6, 1.4), dx * rng.uniform(0.3, 1.0))
            pts = _vessel(rng, (dcx + rng.normal(0, rd * 0.2), dcy + dy * rd * 0.2), angle,
                          r * rng.uniform(0.8, 1.4) * (1.0 if k < 2 else 0.6))
            width = max(1, int(round(rd * (0.12 if k < 2 else 0.08) * rng.uniform(0.8, 1.2))))
            cv2.polylines(vessels, [pts.reshape(-1, 1, 2)], False, 1.0, width, cv2.LINE_AA)
    vessels = gaussian_filter(vessels, 0.8)
    vessel_col = np.array([0.45, 0.08, 0.05], np.float32)
    strength = rng.uniform(0.5, 0.8)
    img = img * (1 - strength * vessels[..., None]) + strength * vessel_col * vessels[..., None]
    # acquisition: illumination, colour balance, defocus, noise, gamma
    img *= rng.uniform(0.75, 1.15) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img = gaussian_filter(img, (rng.uniform(0.5, 1.8), rng.uniform(0.5, 1.8), 0))
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.2)
    img *= fov[..., None]
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def draw_case(seed: int, index: int, rg_fraction: float) -> tuple[bool, float, bool]:
    """Label (RG?), cup-to-disc ratio and notch of image ``index``: deterministic per ``(seed, index)``."""
    rng = np.random.default_rng([seed, index, 1])
    rg = bool(rng.random() < rg_fraction)
    cdr = float(np.clip(rng.normal(0.72, 0.08) if rg else rng.normal(0.42, 0.08), 0.15, 0.92))
    notch = bool(rg and rng.random() < 0.4)
    return rg, cdr, notch


#: ``monai-ext synth airogs`` options (keywords of :func:`synthesize`)
SYNTH_OPTIONS = (
    Option.of("--rg-fraction", type=float, default=REAL_RG_FRACTION,
              help=f"fraction of RG photographs (default: {REAL_RG_FRACTION}, the real AIROGS training set's)"),
)


def synthesize(out: Path, cases: int = 120, seed: int = 0, rg_fraction: float = REAL_RG_FRACTION) -> Path:
    """Write ``cases`` photographs and ``train_labels.csv`` in the AIROGS layout into ``out``; returns ``out``."""
    from PIL import Image

    if not 0.0 <= rg_fraction <= 1.0:
        raise ValueError(f"rg_fraction must be in [0, 1], got {rg_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [f"{ID_COLUMN},{CLASS_COLUMN}"]
    per_folder = max(1, -(-cases // SUBFOLDERS))
    for i in range(cases):
        rg, cdr, notch = draw_case(seed, i, rg_fraction)
        rng = np.random.default_rng([seed, i, 2])
        cid = f"TRAIN{i:06d}"
        path = out / str(i // per_folder) / f"{cid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic_path(path)
        Image.fromarray(synth_fundus(rng, cdr, notch)).save(tmp, format="JPEG", quality=int(rng.integers(85, 96)))
        tmp.replace(path)
        rows.append(f"{cid},{'RG' if rg else 'NRG'}")
    csv = out / LABELS_CSV
    tmp = atomic_path(csv)
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(csv)
    write_synthetic_marker(out, "airogs", cases, seed, rg_fraction=rg_fraction)
    return out
