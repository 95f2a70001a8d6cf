"""Synthetic RadImageNet brain MRI: axial slices in the RadImageNet layout (``MR/brain/<class>/<image>.png``), the
10 classes of the efficient-transformers benchmark in its Table 1 proportions (or balanced).

Every slice: dark background, a bright skull ring, brain parenchyma with grey/white-matter texture, dark CSF
ventricles, a random size, rotation and intensity. Then one finding, each with its own appearance:

- ``acute_infarct``: a bright wedge reaching the cortex (restricted diffusion of an arterial territory);
- ``arteriovenous_anomaly``: a tangle of dark serpiginous flow voids;
- ``chronic_infarct``: a dark, sharply bordered cortical defect (tissue loss, CSF signal);
- ``edema``: a large, diffuse, moderately bright region with finger-like margins;
- ``extra``: an extra-axial mass, a bright lens against the inner skull surface;
- ``focal_flair_hyper``: one or two small bright foci;
- ``intra``: an intra-axial mass with a bright rim and a darker core;
- ``normal``: none;
- ``pituitary_lesion``: a bright round lesion at the midline skull base;
- ``white_matter_changes``: many small bright spots around the ventricles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monai_ext.data.common import atomic_path, split_counts, write_synthetic_marker
from monai_ext.data.dataset import Option
from monai_ext.data.radimagenet_brain import CLASS_FOLDERS, MODALITY_DIR

SYNTH_OPTIONS = (
    Option.of("--size", type=int, default=96, help="image size in pixels (default 96; RadImageNet: 224)"),
    Option.of("--balanced", action="store_true", help="equal class counts (default: the benchmark's Table 1 "
                                                      "proportions)"),
    Option.of("--min-per-class", type=int, default=6, help="least images of a class (default 6: every split "
                                                           "gets one)"),
)


def class_counts(cases: int, balanced: bool = False, min_per_class: int = 6) -> dict[str, int]:
    """Images per class: ``cases`` in the Table 1 proportions (or equal), each at least ``min_per_class``."""
    names = list(CLASS_FOLDERS)
    weights = [1.0] * len(names) if balanced else [CLASS_FOLDERS[n][1] for n in names]
    counts = split_counts(max(cases - min_per_class * len(names), 0), weights)
    return {n: c + min_per_class for n, c in zip(names, counts)}


def _blob(Y: np.ndarray, X: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0,
          edge: float = 1.5) -> np.ndarray:
    """Soft ellipse in [0, 1]."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (X - cx) * c + (Y - cy) * s, -(X - cx) * s + (Y - cy) * c
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.clip((1 - r) * min(rx, ry) / edge, 0, 1)


def synth_slice(rng: np.random.Generator, finding: str, size: int) -> np.ndarray:
    """One ``(size, size)`` uint8 axial brain slice with ``finding``."""
    from scipy.ndimage import gaussian_filter

    Y, X = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + rng.normal(0, size * 0.02), size / 2 + rng.normal(0, size * 0.02)
    ry, rx = size * rng.uniform(0.38, 0.44), size * rng.uniform(0.30, 0.36)
    angle = rng.normal(0, 0.08)
    head = _blob(Y, X, cy, cx, ry, rx, angle)
    brain = _blob(Y, X, cy, cx, ry * 0.88, rx * 0.86, angle)
    tex = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 40)
    img = 0.85 * (head - brain) + brain * (0.45 + 0.06 * tex / (tex.std() + 1e-6))
    wm = _blob(Y, X, cy, cx, ry * 0.6, rx * 0.55, angle)
    img += 0.08 * wm * brain
    for side in (-1, 1):  # ventricles
        img -= 0.3 * _blob(Y, X, cy - size * 0.02, cx + side * rx * 0.14, ry * 0.22, rx * 0.07, angle + side * 0.3)
    # a point inside the brain, at relative radius ``r`` and angle ``t``
    def point(r: float, t: float) -> tuple[float, float]:
        return cy + r * ry * 0.85 * np.sin(t), cx + r * rx * 0.85 * np.cos(t)

    t = rng.uniform(0, 2 * np.pi)
    if finding == "acute_infarct":
        py, px = point(0.6, t)
        img += 0.4 * _blob(Y, X, py, px, ry * rng.uniform(0.18, 0.26), rx * rng.uniform(0.10, 0.16), t) * brain
    elif finding == "arteriovenous_anomaly":
        py, px = point(rng.uniform(0.2, 0.5), t)
        for _ in range(int(rng.integers(5, 9))):
            a = rng.uniform(0, 2 * np.pi)
            wave = np.sin((X - px) * np.cos(a) / 2.0 + (Y - py) * np.sin(a) / 2.0)
            tube = np.exp(-(wave**2) / 0.05) * _blob(Y, X, py, px, size * 0.08, size * 0.08, a)
            img -= 0.35 * tube
    elif finding == "chronic_infarct":
        py, px = point(0.75, t)
        img -= 0.35 * _blob(Y, X, py, px, ry * rng.uniform(0.14, 0.2), rx * rng.uniform(0.14, 0.2), t, 0.6) * brain
    elif finding == "edema":
        py, px = point(rng.uniform(0.3, 0.5), t)
        field = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 30)
        region = _blob(Y, X, py, px, ry * 0.4, rx * 0.4, t, 6.0) * (1 + 0.8 * field / (field.std() + 1e-6))
        img += 0.3 * np.clip(region, 0, 1) * brain
    elif finding == "extra":
        py, px = point(0.92, t)
        img += 0.35 * _blob(Y, X, py, px, size * 0.05, size * rng.uniform(0.09, 0.13), t + np.pi / 2)
    elif finding == "focal_flair_hyper":
        for _ in range(int(rng.integers(1, 3))):
            py, px = point(rng.uniform(0.2, 0.7), rng.uniform(0, 2 * np.pi))
            img += 0.45 * _blob(Y, X, py, px, size * 0.025, size * 0.025, 0.0, 0.8)
    elif finding == "intra":
        py, px = point(rng.uniform(0.2, 0.5), t)
        r = size * rng.uniform(0.07, 0.1)
        outer, inner = _blob(Y, X, py, px, r, r), _blob(Y, X, py, px, r * 0.65, r * 0.65)
        img += 0.4 * (outer - inner) - 0.2 * inner
    elif finding == "pituitary_lesion":
        img += 0.45 * _blob(Y, X, cy + ry * 0.62, cx, size * 0.035, size * 0.045, 0.0, 0.8)
    elif finding == "white_matter_changes":
        for _ in range(int(rng.integers(8, 16))):
            py, px = point(rng.uniform(0.15, 0.45), rng.uniform(0, 2 * np.pi))
            img += 0.3 * _blob(Y, X, py, px, size * 0.015, size * 0.02, rng.uniform(0, np.pi), 0.6)
    elif finding != "normal":
        raise ValueError(f"unknown finding {finding!r}")
    img = gaussian_filter(img, 0.6) * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthesize(out: Path, cases: int = 300, seed: int = 0, size: int = 96, balanced: bool = False,
               min_per_class: int = 6) -> Path:
    """Write about ``cases`` slices (at least ``min_per_class`` per class) as ``out/MR/brain/<class>/*.png``."""
    from PIL import Image

    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    out = Path(out)
    counts = class_counts(cases, balanced, min_per_class)
    for c, (name, n) in enumerate(counts.items()):
        folder = out / MODALITY_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, c, i])
            path = folder / f"{name}_{i:05d}.png"
            tmp = atomic_path(path)
            Image.fromarray(synth_slice(rng, name, size)).save(tmp, format="PNG")
            tmp.replace(path)
    write_synthetic_marker(out, "radimagenet_brain", sum(counts.values()), seed, size=size, balanced=balanced,
                           class_counts=counts)
    return out
