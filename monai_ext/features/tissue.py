"""Tissue detection and tile filters of the feature pipeline (scikit-image).

- :func:`tissue_mask`: Otsu's threshold on the HSV saturation of a low-resolution image of the slide (tissue is
  coloured, glass is white / grey), never below ``min_saturation`` (a slide of glass only has an Otsu
  threshold inside its noise), without near-black pixels (pen, scanner edges), small specks removed and holes
  filled;
- :func:`background_fraction`: the share of a tile's pixels that are white glass (low saturation, bright);
- :func:`sharpness`: the variance of the Laplacian of the tile's grey levels in [0, 1] (low = blurred, out of
  focus).
"""

from __future__ import annotations

import numpy as np

__all__ = ["background_fraction", "sharpness", "tissue_mask"]


def _hsv(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hsv

    return rgb2hsv(np.asarray(rgb)[..., :3])


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05, min_object_px: int = 16) -> np.ndarray:
    """Bool ``(H, W)`` tissue mask of an RGB ``(H, W, 3)`` uint8 image (a slide at low resolution)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    hsv = _hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    thr = float(threshold_otsu(sat)) if float(sat.max() - sat.min()) > 1e-6 else 1.0
    mask = (sat > max(thr, min_saturation)) & (val > 0.15)
    if mask.any():  # scipy.ndimage: the same on every scikit-image version
        mask = ndimage.binary_closing(mask, structure=np.ones((3, 3), bool), border_value=0) | mask
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        mask = (sizes >= min_object_px)[labels] & (labels > 0)
        mask = ndimage.binary_fill_holes(mask)
    return np.asarray(mask, bool)


def background_fraction(rgb: np.ndarray, max_saturation: float = 0.07, min_value: float = 0.82) -> float:
    """Share of white-glass pixels (saturation below ``max_saturation``, value above ``min_value``) of a tile."""
    hsv = _hsv(rgb)
    return float(np.mean((hsv[..., 1] < max_saturation) & (hsv[..., 2] > min_value)))


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey tile in [0, 1] (blurred tiles score low)."""
    from skimage.color import rgb2gray
    from skimage.filters import laplace

    return float(np.var(laplace(rgb2gray(np.asarray(rgb)[..., :3]))))
