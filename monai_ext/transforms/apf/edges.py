"""APF step 1, the edge map: an image mapped to 8-bit grayscale, Gaussian-blurred and passed to Canny
(OpenCV, or scikit-image without it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import utils
from .utils import ArrayLike, check_chw, check_finite, cv2, to_numpy

__all__ = ["compute_edge_map", "edges01", "to_uint8_gray"]


def to_uint8_gray(image: ArrayLike, window: Sequence[float] | None = None) -> np.ndarray:
    """Map a ``(C, H, W)`` image to an 8-bit grayscale ``(H, W)`` for Canny.

    - 3 (or 4, alpha ignored) channels: RGB luminance with OpenCV's weights (0.299, 0.587,
      0.114; for ``uint8`` within 1 gray level of ``cv2.COLOR_RGB2GRAY``); other channel
      counts: the channel mean.
    - ``window=(low, high)`` (e.g. CT in HU): clipped to the window and scaled to 0..255.
    - otherwise ``uint8`` is used as is, ``bool`` as 0/255, floats within [0, 1] are scaled by
      255, anything else is min-max scaled per image (a constant image maps to 0).
    """
    arr = to_numpy(image)
    check_chw(arr, "image")
    c = arr.shape[0]
    if arr.dtype == np.uint8 and window is None:
        if c == 1:
            return np.ascontiguousarray(arr[0])
        if c in (3, 4):
            if utils.HAS_CV2:
                # two weighted sums on the channel planes: 2x faster than merge + cvtColor at
                # 8192 px (no channel-last copy), within 1 gray level of cv2.COLOR_RGB2GRAY
                r, g, b = (np.ascontiguousarray(arr[i]) for i in range(3))
                rg = cv2.addWeighted(r, 0.299 / 0.886, g, 0.587 / 0.886, 0.0)
                return cv2.addWeighted(rg, 0.886, b, 0.114, 0.0)
            g = arr[0].astype(np.uint32) * 4899 + arr[1].astype(np.uint32) * 9617 + arr[2].astype(np.uint32) * 1868
            return ((g + 8192) >> 14).astype(np.uint8)
        return np.rint(arr.mean(axis=0, dtype=np.float32)).astype(np.uint8)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    a = arr.astype(np.float32, copy=False)
    if c in (3, 4):
        g = 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    elif c == 1:
        g = a[0]
    else:
        g = a.mean(axis=0)
    if window is not None:
        lo, hi = (float(v) for v in window)
        if not hi > lo:
            raise ValueError(f"window must be (low, high) with high > low, got {tuple(window)}.")
        g = (np.clip(g, lo, hi) - lo) * (255.0 / (hi - lo))
    elif arr.dtype == np.uint8:
        pass
    else:
        gmin, gmax = float(g.min()), float(g.max())
        if np.issubdtype(arr.dtype, np.floating) and gmin >= 0.0 and gmax <= 1.0:
            g = g * 255.0
        elif gmax > gmin:
            g = (g - gmin) * (255.0 / (gmax - gmin))
        else:
            g = np.zeros_like(g)
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def _gaussian_sigma(k: int) -> float:
    # OpenCV's sigma for a k x k kernel given sigma = 0
    return 0.3 * ((k - 1) * 0.5 - 1) + 0.8


def edges01(
    image: ArrayLike,
    blur_kernel: int,
    canny_low: float,
    canny_high: float,
    window: Sequence[float] | None,
    backend: str,
) -> np.ndarray:
    """Canny edges as a ``uint8`` 0/1 array ``(H, W)`` (:func:`compute_edge_map` without its checks)."""
    if backend not in ("auto", "opencv", "skimage"):
        raise ValueError(f"edge backend must be 'auto', 'opencv' or 'skimage', got {backend!r}.")
    if backend == "opencv" and not utils.HAS_CV2:
        raise ImportError("edge backend 'opencv' needs opencv-python-headless (import cv2 failed).")
    use_cv2 = utils.HAS_CV2 and backend != "skimage"
    k = int(blur_kernel)
    if k > 1 and k % 2 == 0:
        raise ValueError(f"blur_kernel must be odd (or <= 1 for no blur), got {blur_kernel}.")
    if not 0 <= canny_low <= canny_high:
        raise ValueError(f"Canny thresholds must satisfy 0 <= low <= high, got low={canny_low}, high={canny_high}.")
    gray = to_uint8_gray(image, window)
    if use_cv2:
        if k > 1:
            gray = cv2.GaussianBlur(gray, (k, k), 0)
        e = cv2.Canny(gray, float(canny_low), float(canny_high))
        return cv2.threshold(e, 0, 1, cv2.THRESH_BINARY)[1]
    from scipy.ndimage import gaussian_filter
    from skimage.feature import canny

    g = gray.astype(np.float32)
    if k > 1:
        sigma = _gaussian_sigma(k)
        g = np.rint(gaussian_filter(g, sigma=sigma, mode="mirror", truncate=((k - 1) / 2) / sigma))
    return canny(g, sigma=0.0, low_threshold=float(canny_low), high_threshold=float(canny_high)).astype(np.uint8)


def compute_edge_map(
    image: ArrayLike,
    blur_kernel: int = 3,
    canny_low: float = 100.0,
    canny_high: float = 200.0,
    window: Sequence[float] | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Edge map of a ``(C, H, W)`` image: 8-bit grayscale (:func:`to_uint8_gray`), ``k x k``
    Gaussian blur (OpenCV's sigma for ``k``; ``k <= 1``: no blur), Canny with hysteresis
    thresholds ``canny_low / canny_high`` on the 0..255 scale.

    ``backend``: ``"opencv"`` (``cv2.Canny``, L1 gradient, as in the paper's code), ``"skimage"``
    (``skimage.feature.canny``, L2 gradient: close but not identical) or ``"auto"`` (OpenCV when
    importable). Returns a boolean ``(H, W)`` array. Raises ``ValueError`` on NaN / inf.
    """
    arr = to_numpy(image)
    check_chw(arr, "image")
    check_finite(arr, "image")
    return edges01(arr, blur_kernel, canny_low, canny_high, window, backend).astype(bool)
