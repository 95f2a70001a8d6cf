"""APF: quadtree adaptive patching (patch / unpatch) for 2D images, as array functions and
MONAI dictionary transforms.

Algorithm (``shared/papers/adaptive_patching_apf.txt``, Section III, Algorithm 1), done
deterministically and without the pitfalls of the authors' public research code (see
``docs/apf.md``):

1. **Edge map**: the image (channel-first ``(C, H, W)``; RGB converted to luminance, CT
   windowed first) is mapped to 8 bit, blurred with a ``k x k`` Gaussian and passed to
   Canny with thresholds ``low / high`` (OpenCV conventions, 100 / 200 in the paper). A
   precomputed edge map may be given instead.
2. **Quadtree**: the image is padded (bottom / right) to a square ``N x N`` with ``N`` the next
   power of two. Edge counts of every quadtree node come from one summed-area table sampled
   on the ``min_size`` grid and summed 2 x 2 level by level (no Python loop over pixels or
   nodes). Modes:

   - ``"threshold"``: split every node whose edge count is ``> split_value``, while its depth
     is ``< max_depth`` and it is larger than ``min_size`` (the paper's criterion).
   - ``"fixed"``: repeatedly split the leaf with the most edge pixels (counts ``> split_value``
     only), until ``num_tokens`` leaves or nothing can split. The leaf count grows as
     ``1 + 3k``; the rest is padded with empty, masked tokens. Because a child never holds
     more edges than its parent, this greedy process splits exactly the ``k`` top-ranked
     candidate nodes, ranked by (edge count desc, depth asc, Morton code asc); that
     ranking is the deterministic tie-break, and it is computed with one ``argpartition``.
   - ``"uniform"``: every node larger than ``min_size`` splits: plain ViT patching of
     ``min_size`` patches, through the same code path.

3. **Order**: leaves are sorted by the Morton (Z-order) code of their top-left corner, which
   is the NW, NE, SW, SE depth-first order of the tree. Leaf table ``(L, 3)`` int64 of
   ``(y, x, size)`` in padded-image pixels; padding rows are ``(0, 0, 0)``; ``mask`` ``(L,)``
   is True for real leaves. Nothing is ever dropped at random.
4. **Resize**: each leaf is resized to ``p x p``: images by exact area averaging (anti-aliased;
   leaf sizes are ``p`` times a power of two, so this is a block mean), label masks by
   nearest (the centre pixel of each block).
5. **Layout**: ``"patches"`` gives the stack ``(L, C, p, p)``; ``"grid"`` places token ``i`` at
   the ``i``-th cell of a Z-curve over a ``sqrt(L) x sqrt(L)`` grid, giving a pseudo-image
   ``(C, sqrt(L) * p, sqrt(L) * p)`` on which a UNETR with patch size ``p`` sees exactly one
   token per leaf (``L`` must be a perfect square). In uniform mode with ``L = (N / min_size)^2``
   the grid is exactly the area-down-scaled image.
6. **Unpatch**: predicted ``p x p`` patches are resized (bilinear by default) into their leaf
   boxes of the ``N x N`` canvas, one ``torch.nn.functional.interpolate`` per leaf size,
   padded tokens ignored, then cropped to ``H x W`` and optionally arg-maxed / thresholded.

The metadata needed to unpatch (:func:`plan_quadtree`'s dict: ``leaves``, ``mask``,
``spatial_shape``, ``padded_size``, ``patch_size``, ``num_leaves``) holds only arrays and
integers, so it survives MONAI's ``list_data_collate`` / ``decollate_batch``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep, optional_import

cv2, HAS_CV2 = optional_import("cv2")

logger = logging.getLogger(__name__)

__all__ = [
    "APF_MODES",
    "MAX_SIDE",
    "AdaptivePatchd",
    "AdaptiveUnpatchd",
    "compute_edge_map",
    "extract_patches",
    "grid_to_tokens",
    "morton_encode",
    "plan_quadtree",
    "quadtree_patch",
    "quadtree_unpatch",
    "to_uint8_gray",
    "tokens_to_grid",
    "upper_bound_dice",
    "zorder_grid",
    "zorder_to_raster",
]

APF_MODES = ("fixed", "threshold", "uniform")
#: largest padded side supported (keeps the fixed-mode ranking key inside 63 bits)
MAX_SIDE = 16384

ArrayLike = Any  # np.ndarray | torch.Tensor (incl. MetaTensor)


# ----------------------------------------------------------------------------- helpers
def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.as_tensor() if hasattr(x, "as_tensor") else x
        return t.detach().cpu().numpy()
    return np.asarray(x)


def _check_chw(arr: np.ndarray, name: str) -> None:
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a channel-first 2D image (C, H, W), got shape {tuple(arr.shape)}.")
    if min(arr.shape) < 1:
        raise ValueError(f"{name}: empty image of shape {tuple(arr.shape)}.")


def _part1by1(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64) & 0xFFFFFFFF
    v = (v | (v << 16)) & 0x0000FFFF0000FFFF
    v = (v | (v << 8)) & 0x00FF00FF00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v << 2)) & 0x3333333333333333
    v = (v | (v << 1)) & 0x5555555555555555
    return v


def morton_encode(y: ArrayLike, x: ArrayLike) -> np.ndarray:
    """Morton (Z-order) code of integer grid coordinates; ``y`` gives the higher bit of each
    pair, so the four children of a node come in NW, NE, SW, SE order."""
    return (_part1by1(np.asarray(y)) << 1) | _part1by1(np.asarray(x))


@lru_cache(maxsize=64)
def _zorder_grid_cached(side: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.divmod(np.arange(side * side, dtype=np.int64), side)
    order = np.argsort(morton_encode(r, c), kind="stable")
    rows, cols = r[order], c[order]
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def zorder_grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of a ``side x side`` grid in Z-curve order: ``(rows, cols)``, each ``(side**2,)``.

    For a power-of-two side this is the exact Z-curve; otherwise the cells are ordered by
    their Morton code (the Z-curve of the enclosing power-of-two grid, cells outside skipped).
    """
    if side < 1:
        raise ValueError(f"grid side must be >= 1, got {side}.")
    return _zorder_grid_cached(int(side))


def _grid_side(num_tokens: int) -> int:
    side = math.isqrt(int(num_tokens))
    if side * side != int(num_tokens):
        raise ValueError(
            f"num_tokens={num_tokens} is not a perfect square: the 'grid' layout needs L = S*S tokens "
            f"(e.g. {side * side} or {(side + 1) ** 2}); use layout='patches' for other lengths."
        )
    return side


# ----------------------------------------------------------------------------- edge map
def to_uint8_gray(image: ArrayLike, window: Sequence[float] | None = None) -> np.ndarray:
    """Map a ``(C, H, W)`` image to an 8-bit grayscale ``(H, W)`` for Canny.

    - 3 (or 4, alpha ignored) channels: RGB luminance with OpenCV's weights (0.299, 0.587,
      0.114; for ``uint8`` within 1 gray level of ``cv2.COLOR_RGB2GRAY``); other channel
      counts: the channel mean.
    - ``window=(low, high)`` (e.g. CT in HU): clipped to the window and scaled to 0..255.
    - otherwise ``uint8`` is used as is, ``bool`` as 0/255, floats within [0, 1] are scaled by
      255, anything else is min-max scaled per image (a constant image maps to 0).
    """
    arr = _to_numpy(image)
    _check_chw(arr, "image")
    c = arr.shape[0]
    if arr.dtype == np.uint8 and window is None:
        if c == 1:
            return np.ascontiguousarray(arr[0])
        if c in (3, 4):
            if HAS_CV2:
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


def _edges01(
    image: ArrayLike,
    blur_kernel: int,
    canny_low: float,
    canny_high: float,
    window: Sequence[float] | None,
    backend: str,
) -> np.ndarray:
    """Canny edges as a ``uint8`` 0/1 array ``(H, W)``."""
    if backend not in ("auto", "opencv", "skimage"):
        raise ValueError(f"edge backend must be 'auto', 'opencv' or 'skimage', got {backend!r}.")
    if backend == "opencv" and not HAS_CV2:
        raise ImportError("edge backend 'opencv' needs opencv-python-headless (import cv2 failed).")
    use_cv2 = HAS_CV2 and backend != "skimage"
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
    arr = _to_numpy(image)
    _check_chw(arr, "image")
    _check_finite(arr, "image")
    return _edges01(arr, blur_kernel, canny_low, canny_high, window, backend).astype(bool)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values: APF patching needs a finite image.")


# ----------------------------------------------------------------------------- quadtree
def _block_counts(edges01: np.ndarray, size: int) -> np.ndarray:
    """Edge counts of the ``size x size`` blocks of a square ``(N, N)`` 0/1 map, from a
    summed-area table sampled every ``size`` pixels."""
    n = edges01.shape[0]
    if size == 1:
        return edges01.astype(np.int64)
    if HAS_CV2:
        sat = cv2.integral(edges01, sdepth=cv2.CV_32S if n * n < 2**31 else cv2.CV_64F)
        s = sat[::size, ::size].astype(np.int64)
    else:
        s = np.zeros((n // size + 1, n // size + 1), dtype=np.int64)
        s[1:, 1:] = edges01.cumsum(axis=0, dtype=np.int64)[size - 1 :: size].cumsum(axis=1)[:, size - 1 :: size]
    return s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]


def _count_pyramid(finest: np.ndarray) -> list[np.ndarray]:
    """``[counts at depth 0 (1x1), ..., finest]``, each level the 2 x 2 sum of the next."""
    levels = [finest]
    while levels[-1].shape[0] > 1:
        c = levels[-1]
        h = c.shape[0] // 2
        levels.append(c.reshape(h, 2, h, 2).sum(axis=(1, 3)))
    return levels[::-1]


def _build_tree(
    counts: list[np.ndarray] | None,
    depth: int,
    side: int,
    mode: str,
    split_value: float,
    max_splits: int | None,
) -> np.ndarray:
    """Leaves ``(n, 3)`` int64 ``(y, x, size)`` in Z-order. ``depth``: deepest level allowed
    (node size ``side >> depth``); ``counts[d]``: edge counts at depth ``d`` (unused in uniform mode)."""
    finest_bits = len(counts) - 1 if counts is not None else depth  # Morton grid = deepest count level
    split: list[np.ndarray] = []
    if mode == "uniform":
        split = [np.ones((1 << d, 1 << d), dtype=bool) for d in range(depth)]
    else:
        assert counts is not None
        split = [counts[d] > split_value for d in range(depth)]
        n_cand = int(sum(int(s.sum()) for s in split))
        if mode == "fixed" and max_splits is not None and n_cand > max_splits:
            # rank all candidates: count desc, then depth asc, then Z-order asc (unique keys)
            dbits = 2 * finest_bits
            ds, ys, xs, keys = [], [], [], []
            for d in range(depth):
                iy, ix = np.nonzero(split[d])
                shift = finest_bits - d
                code = morton_encode(iy << shift, ix << shift)
                key = (counts[d][iy, ix].astype(np.int64) << (dbits + 4)) | (np.int64(finest_bits - d) << dbits)
                keys.append(key | ((np.int64(1) << dbits) - 1 - code))
                ds.append(np.full(iy.shape, d, dtype=np.int64))
                ys.append(iy)
                xs.append(ix)
            key_all = np.concatenate(keys)
            top = np.argpartition(-key_all, max_splits - 1)[:max_splits] if max_splits > 0 else np.zeros(0, np.int64)
            d_all, y_all, x_all = np.concatenate(ds)[top], np.concatenate(ys)[top], np.concatenate(xs)[top]
            split = [np.zeros((1 << d, 1 << d), dtype=bool) for d in range(depth)]
            for d in range(depth):
                sel = d_all == d
                split[d][y_all[sel], x_all[sel]] = True
    ys, xs, ss = [], [], []
    alive = np.ones((1, 1), dtype=bool)
    for d in range(depth + 1):
        sp = split[d] if d < depth else np.zeros_like(alive)
        leaf = alive & ~sp
        iy, ix = np.nonzero(leaf)
        size = side >> d
        ys.append(iy * size)
        xs.append(ix * size)
        ss.append(np.full(iy.shape, size, dtype=np.int64))
        if d < depth:
            alive = (alive & sp).repeat(2, axis=0).repeat(2, axis=1)
            if not alive.any():
                break
    y = np.concatenate(ys).astype(np.int64)
    x = np.concatenate(xs).astype(np.int64)
    s = np.concatenate(ss)
    cell = side >> depth
    order = np.argsort(morton_encode(y // cell, x // cell), kind="stable")
    return np.stack([y[order], x[order], s[order]], axis=1)


def plan_quadtree(
    image: ArrayLike | None = None,
    *,
    patch_size: int,
    num_tokens: int | None = None,
    mode: str = "fixed",
    min_size: int | None = None,
    max_depth: int | None = None,
    split_value: float = 0,
    edges: ArrayLike | None = None,
    spatial_shape: Sequence[int] | None = None,
    blur_kernel: int = 3,
    canny_low: float = 100.0,
    canny_high: float = 200.0,
    window: Sequence[float] | None = None,
    edge_backend: str = "auto",
    layout: str = "grid",
) -> dict[str, Any]:
    """Build the quadtree of one image and return the APF metadata.

    Args:
        image: ``(C, H, W)`` numpy array or tensor; only its shape is used in ``"uniform"`` mode
            or when ``edges`` is given (then it may be ``None`` if ``spatial_shape`` is given).
        patch_size: ``p``, the side every leaf is resized to (power of two).
        num_tokens: ``L``, sequence length after padding. ``"fixed"`` mode: required (at most
            ``1 + 3 * ((L - 1) // 3)`` real leaves). ``"threshold"`` / ``"uniform"``: optional
            (default: the leaf count); a ``ValueError`` is raised when the tree has more than
            ``L`` leaves (never dropped). ``layout="grid"`` needs a perfect square.
        mode: ``"fixed"``, ``"threshold"`` or ``"uniform"``.
        min_size: smallest leaf side (power of two, ``>= patch_size``; default ``patch_size``);
            in ``"uniform"`` mode the side of every leaf.
        max_depth: deepest split level (root depth 0), default: down to ``min_size``.
        split_value: a node may split only if its edge-pixel count is ``> split_value``
            (fixed mode: leaves with no more edges are never split).
        edges: precomputed edge map ``(H, W)`` or ``(1, H, W)``; nonzero = edge.
        spatial_shape: ``(H, W)`` when ``image`` is ``None``.
        blur_kernel, canny_low, canny_high, window, edge_backend: see :func:`compute_edge_map`.
        layout: ``"grid"`` or ``"patches"`` (only used to validate ``num_tokens`` early).

    Returns:
        dict with ``leaves`` ``(L, 3)`` int64 ``(y, x, size)`` in Z-order (padding rows 0),
        ``mask`` ``(L,)`` bool (True = real leaf), ``spatial_shape`` ``(2,)`` int64 (original
        ``H, W``), ``padded_size`` (int ``N``), ``patch_size`` (int), ``num_leaves`` (int).
    """
    if mode not in APF_MODES:
        raise ValueError(f"mode must be one of {APF_MODES}, got {mode!r}.")
    if layout not in ("grid", "patches"):
        raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
    p = int(patch_size)
    if not _is_pow2(p):
        raise ValueError(f"patch_size must be a power of two, got {patch_size}.")
    m = p if min_size is None else int(min_size)
    if not _is_pow2(m) or m < p:
        raise ValueError(
            f"min_size must be a power of two >= patch_size={p} (leaves are never up-sampled), got {min_size}."
        )
    arr = None
    if image is not None:
        arr = _to_numpy(image)
        _check_chw(arr, "image")
        h, w = int(arr.shape[1]), int(arr.shape[2])
    elif spatial_shape is not None:
        h, w = (int(v) for v in spatial_shape)
    elif edges is not None:
        h, w = _to_numpy(edges).shape[-2:]
    else:
        raise ValueError("plan_quadtree needs an image, an edge map or a spatial_shape.")
    side = _next_pow2(max(h, w))
    if side > MAX_SIDE:
        raise ValueError(f"image of {h} x {w} pads to {side} x {side}, above the supported {MAX_SIDE} x {MAX_SIDE}.")
    if p > side or m > side:
        raise ValueError(
            f"patch_size={p} / min_size={m} is larger than the image ({h} x {w}, padded to {side} x {side})."
        )
    if num_tokens is not None:
        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
        if layout == "grid":
            _grid_side(int(num_tokens))
    elif mode == "fixed":
        raise ValueError("mode='fixed' needs num_tokens (the sequence length L).")
    if max_depth is not None and int(max_depth) < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}.")
    depth = int(math.log2(side // m))
    if max_depth is not None and mode != "uniform":
        depth = min(depth, int(max_depth))

    counts = None
    if mode != "uniform":
        if edges is not None:
            e = _to_numpy(edges)
            if e.ndim == 3 and e.shape[0] == 1:
                e = e[0]
            if e.shape != (h, w):
                raise ValueError(f"edge map shape {tuple(e.shape)} differs from the image's spatial shape {(h, w)}.")
            e01 = (e != 0).astype(np.uint8)
        else:
            if arr is None:
                raise ValueError(f"mode={mode!r} needs the image (or a precomputed edge map).")
            _check_finite(arr, "image")
            e01 = _edges01(arr, blur_kernel, canny_low, canny_high, window, edge_backend)
        if (h, w) != (side, side):
            padded = np.zeros((side, side), dtype=np.uint8)
            padded[:h, :w] = e01
            e01 = padded
        finest = _block_counts(np.ascontiguousarray(e01), m)
        counts = _count_pyramid(finest)
    elif arr is not None:
        _check_finite(arr, "image")

    max_splits = None
    if mode == "fixed":
        max_splits = (int(num_tokens) - 1) // 3
    leaves = _build_tree(counts, depth, side, mode, float(split_value), max_splits)
    n = leaves.shape[0]
    total = n if num_tokens is None else int(num_tokens)
    if n > total:
        raise ValueError(
            f"mode={mode!r} produced {n} leaves, more than num_tokens={total}; leaves are never dropped: "
            "raise split_value / min_size, or use mode='fixed'."
        )
    if layout == "grid" and num_tokens is None and math.isqrt(total) ** 2 != total:
        raise ValueError(
            f"mode={mode!r} produced {n} leaves; the 'grid' layout needs num_tokens, a perfect square >= {n} "
            f"(e.g. {(math.isqrt(n - 1) + 1) ** 2})."
        )
    table = np.zeros((total, 3), dtype=np.int64)
    table[:n] = leaves
    mask = np.zeros(total, dtype=bool)
    mask[:n] = True
    logger.debug("APF %s: %d x %d -> %d leaves (+%d padding), p=%d", mode, h, w, n, total - n, p)
    return {
        "leaves": table,
        "mask": mask,
        "spatial_shape": np.array([h, w], dtype=np.int64),
        "padded_size": side,
        "patch_size": p,
        "num_leaves": n,
    }


def _meta_values(meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """``leaves, mask, H, W, N, p`` from a (possibly collated / decollated) metadata dict."""
    try:
        leaves = _to_numpy(meta["leaves"]).astype(np.int64)
        mask = _to_numpy(meta["mask"]).astype(bool)
        h, w = (int(v) for v in _to_numpy(meta["spatial_shape"]).reshape(-1))
        side = int(_to_numpy(meta["padded_size"]).reshape(()))
        p = int(_to_numpy(meta["patch_size"]).reshape(()))
    except KeyError as e:
        raise KeyError(f"APF metadata misses {e}; expected the dict returned by plan_quadtree.") from None
    except ValueError as e:
        raise ValueError(
            f"APF metadata of one sample expected (leaves (L, 3), scalar sizes); got a batched one? ({e})"
        ) from None
    if leaves.ndim != 2 or leaves.shape[1] != 3 or mask.shape != (leaves.shape[0],):
        raise ValueError(
            f"APF metadata of one sample expected: leaves (L, 3) and mask (L,), got {leaves.shape} and {mask.shape}."
        )
    return leaves, mask, h, w, side, p


# ----------------------------------------------------------------------------- layouts
def tokens_to_grid(tokens: ArrayLike) -> ArrayLike:
    """``(L, C, p, p)`` -> ``(C, S*p, S*p)`` with token ``i`` at the ``i``-th Z-curve cell of the
    ``S x S`` grid (``S = sqrt(L)``). Numpy or torch in, same type out."""
    n, c, p, p2 = tokens.shape
    if p != p2:
        raise ValueError(f"tokens must be (L, C, p, p), got {tuple(tokens.shape)}.")
    side = _grid_side(n)
    rows, cols = zorder_grid(side)
    if isinstance(tokens, torch.Tensor):
        grid = tokens.new_zeros((c, side, p, side, p))
        grid[:, torch.tensor(rows, device=tokens.device), :, torch.tensor(cols, device=tokens.device), :] = tokens
    else:
        grid = np.zeros((c, side, p, side, p), dtype=tokens.dtype)
        grid[:, rows, :, cols, :] = tokens
    return grid.reshape(c, side * p, side * p)


def grid_to_tokens(grid: ArrayLike, patch_size: int) -> ArrayLike:
    """Inverse of :func:`tokens_to_grid`: ``(C, S*p, S*p)`` -> ``(S*S, C, p, p)``."""
    if grid.ndim != 3 or grid.shape[1] != grid.shape[2] or grid.shape[1] % patch_size:
        raise ValueError(
            f"grid must be (C, S*p, S*p) with p={patch_size}, got {tuple(grid.shape)}."
        )
    c, side = grid.shape[0], grid.shape[1] // patch_size
    rows, cols = zorder_grid(side)
    g = grid.reshape(c, side, patch_size, side, patch_size)
    if isinstance(grid, torch.Tensor):
        return g[:, torch.tensor(rows, device=grid.device), :, torch.tensor(cols, device=grid.device), :]
    return g[:, rows, :, cols, :]


def zorder_to_raster(x: ArrayLike, axis: int = 0) -> ArrayLike:
    """Reorder per-token values (``mask``, ``leaves``, ...) along ``axis`` from token (Z-curve)
    order to the row-major order of the ``S x S`` grid, i.e. the order in which a ViT / UNETR
    patch embedding of the pseudo-image sees the tokens. Works on batches (``axis=1``)."""
    n = int(x.shape[axis])
    side = _grid_side(n)
    rows, cols = zorder_grid(side)
    perm = np.argsort(rows * side + cols)  # raster position -> token index
    if isinstance(x, torch.Tensor):
        return x.index_select(axis, torch.as_tensor(perm, device=x.device))
    return np.take(np.asarray(x), perm, axis=axis)


# ----------------------------------------------------------------------------- patch / unpatch
def _sum_dtype(dtype: np.dtype, block: int) -> np.dtype:
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float64)
    if dtype == bool or (np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize <= 2):
        vmax = 1 if dtype == bool else np.iinfo(dtype).max
        return np.dtype(np.uint32) if vmax * block * block < 2**32 else np.dtype(np.int64)
    return np.dtype(np.int64)


def extract_patches(
    x: ArrayLike,
    meta: Mapping[str, Any],
    interpolation: str = "area",
    layout: str = "grid",
    pad_value: float = 0.0,
) -> ArrayLike:
    """Resize every leaf of ``meta`` (from :func:`plan_quadtree`) of ``x`` ``(C, H, W)`` to
    ``p x p``.

    ``interpolation``: ``"area"`` for images: the block mean (leaf sizes are ``p`` times a
    power of two), as OpenCV's ``INTER_AREA``: exact for float input, rounded to the nearest
    integer for 8/16-bit input when OpenCV is installed (exact without it); output float32
    (float64 for float64 input). ``"nearest"`` for label masks: the centre pixel of each block
    (dtype kept).
    Returns ``(L, C, p, p)`` (``layout="patches"``) or ``(C, sqrt(L)*p, sqrt(L)*p)``
    (``"grid"``); padding tokens are zeros. Same array type as ``x``.
    """
    if interpolation not in ("area", "nearest"):
        raise ValueError(f"interpolation must be 'area' or 'nearest', got {interpolation!r}.")
    if layout not in ("grid", "patches"):
        raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
    leaves, mask, h, w, side, p = _meta_values(meta)
    arr = _to_numpy(x)
    _check_chw(arr, "array to patch")
    if arr.shape[1:] != (h, w):
        raise ValueError(
            f"array of spatial shape {tuple(arr.shape[1:])} differs from the image the quadtree was built on {(h, w)}."
        )
    c = arr.shape[0]
    if (h, w) != (side, side):
        arr = np.pad(arr, ((0, 0), (0, side - h), (0, side - w)), mode="constant", constant_values=pad_value)
    if interpolation == "area":
        out_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    else:
        out_dtype = arr.dtype
    n_tok = leaves.shape[0]
    if layout == "grid":  # write each token straight into its Z-curve cell of the grid
        side_g = _grid_side(n_tok)
        rows, cols = zorder_grid(side_g)
        out = np.zeros((c, side_g, p, side_g, p), dtype=out_dtype)

        def put(idx: np.ndarray, ch: int | None, values: np.ndarray) -> None:
            if ch is None:
                out[:, rows[idx], :, cols[idx], :] = values  # values (n, C, p, p)
            else:
                out[ch, rows[idx], :, cols[idx], :] = values  # values (n, p, p)

    else:
        out = np.zeros((n_tok, c, p, p), dtype=out_dtype)

        def put(idx: np.ndarray, ch: int | None, values: np.ndarray) -> None:
            if ch is None:
                out[idx] = values
            else:
                out[idx, ch] = values

    real = np.nonzero(mask)[0]
    sizes = leaves[real, 2]
    groups = []
    for s in np.unique(sizes):
        s = int(s)
        idx = real[sizes == s]
        groups.append((s, idx, leaves[idx, 0] // s, leaves[idx, 1] // s))
    if interpolation == "nearest":
        for s, idx, by, bx in groups:
            f = s // p
            o = f // 2
            put(idx, None, arr.reshape(c, side // s, p, f, side // s, p, f)[:, by, :, o, bx, :, o])
    elif HAS_CV2:
        # Per channel plane: cv2's integer-factor INTER_AREA to the smallest needed level (the
        # exact block mean for float input, rounded to the nearest integer for 8/16-bit input:
        # error <= 0.5), then float halvings (exact means of means) for the coarser levels.
        if arr.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
            arr = arr.astype(np.float64 if arr.dtype.itemsize > 2 else np.float32)
        fdtype = np.float64 if arr.dtype == np.float64 else np.float32
        for ch in range(c):
            plane = np.ascontiguousarray(arr[ch])
            level = None
            for s, idx, by, bx in groups:  # ascending leaf size
                g, f = side // s, s // p
                if f == 1:
                    pooled = plane
                else:
                    if level is None:
                        level = cv2.resize(plane, (side // f, side // f), interpolation=cv2.INTER_AREA)
                        level = level.astype(fdtype, copy=False)
                    while level.shape[0] > side // f:
                        half = level.shape[0] // 2
                        level = cv2.resize(level, (half, half), interpolation=cv2.INTER_AREA)
                    pooled = level
                put(idx, ch, pooled.reshape(g, p, g, p)[by, :, bx, :])
    else:
        for s, idx, by, bx in groups:
            f, g = s // p, side // s
            blocks = arr.reshape(c, g, p, f, g, p, f)[:, by, :, :, bx, :, :]  # (n, C, p, f, p, f)
            put(idx, None, blocks.sum(axis=(3, 5), dtype=_sum_dtype(arr.dtype, f)) / (f * f))
    if layout == "grid":
        out = out.reshape(c, side_g * p, side_g * p)
    if isinstance(x, torch.Tensor):
        return convert_to_dst_type(out, dst=x, dtype=out.dtype)[0]
    return out


def quadtree_patch(
    image: ArrayLike,
    *,
    patch_size: int,
    num_tokens: int | None = None,
    mode: str = "fixed",
    layout: str = "grid",
    interpolation: str = "area",
    pad_value: float = 0.0,
    **plan_kwargs: Any,
) -> tuple[ArrayLike, dict[str, Any]]:
    """Plan the quadtree of ``image`` ``(C, H, W)`` and patch it: returns ``(patched, meta)``,
    ``patched`` ``(C, sqrt(L)*p, sqrt(L)*p)`` (grid) or ``(L, C, p, p)`` (patches).

    ``plan_kwargs`` go to :func:`plan_quadtree` (``min_size``, ``max_depth``, ``split_value``,
    ``edges``, ``blur_kernel``, ``canny_low``, ``canny_high``, ``window``, ``edge_backend``).
    To patch a label with the same tree: ``extract_patches(label, meta, "nearest")``.
    """
    meta = plan_quadtree(image, patch_size=patch_size, num_tokens=num_tokens, mode=mode, layout=layout, **plan_kwargs)
    return extract_patches(image, meta, interpolation=interpolation, layout=layout, pad_value=pad_value), meta


@lru_cache(maxsize=256)
def _resize_matrix(p: int, s: int, mode: str) -> np.ndarray:
    """``(s, p)`` matrix ``A`` with ``A @ x @ A.T`` == ``F.interpolate(x, (s, s), mode)`` for
    ``p x p`` inputs (``align_corners=False`` for bilinear; torch's index rules for nearest)."""
    dst = np.arange(s, dtype=np.float64)
    a = np.zeros((s, p), dtype=np.float64)
    if mode == "bilinear":
        src = np.maximum((dst + 0.5) * (p / s) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), p - 1)
        i1 = np.minimum(i0 + 1, p - 1)
        w1 = src - i0
        np.add.at(a, (np.arange(s), i0), 1.0 - w1)
        np.add.at(a, (np.arange(s), i1), w1)
    else:
        offset = 0.5 if mode == "nearest-exact" else 0.0
        a[np.arange(s), np.minimum(np.floor((dst + offset) * (p / s)).astype(np.int64), p - 1)] = 1.0
    return a


def _resize_up(x: torch.Tensor, s: int, mode: str) -> torch.Tensor:
    """Resize ``(n, K, p, p)`` to ``(n, K, s, s)``. Bilinear / nearest as two small matrix
    products (same values as ``F.interpolate``, several times faster for many small patches);
    other modes through ``F.interpolate``."""
    if mode in ("bilinear", "nearest", "nearest-exact"):
        a = torch.as_tensor(_resize_matrix(int(x.shape[-1]), int(s), mode), dtype=x.dtype, device=x.device)
        return torch.matmul(torch.matmul(a, x), a.T)
    kwargs = {"align_corners": False} if mode in ("bicubic",) else {}
    return F.interpolate(x, size=(s, s), mode=mode, **kwargs)


def quadtree_unpatch(
    patched: ArrayLike,
    meta: Mapping[str, Any],
    *,
    layout: str = "grid",
    mode: str = "bilinear",
    argmax: bool = False,
    threshold: float | None = None,
    crop: bool = True,
) -> ArrayLike:
    """Put per-leaf predictions back on the image canvas.

    Args:
        patched: ``(K, sqrt(L)*p, sqrt(L)*p)`` (``layout="grid"``) or ``(L, K, p, p)``
            (``"patches"``) logits / probabilities of one sample (numpy or torch, any device).
        meta: the sample's APF metadata (:func:`plan_quadtree`; decollated is fine).
        mode: ``torch.nn.functional.interpolate`` mode to resize ``p x p`` to each leaf's box
            (``"bilinear"`` for logits / probabilities, ``"nearest"`` for labels).
        argmax: return the class index ``(1, H, W)`` (float, like MONAI's ``AsDiscrete``).
        threshold: if given (and not ``argmax``), return ``(K, H, W)`` of ``value > threshold``
            (float).
        crop: crop the power-of-two padding back to ``H x W`` (default) or keep ``N x N``.

    Returns:
        ``(K, H, W)`` (or ``(1, H, W)`` with ``argmax``), same array type as ``patched``.
        Padding tokens are ignored.
    """
    if layout not in ("grid", "patches"):
        raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
    leaves, mask, h, w, side, p = _meta_values(meta)
    t = patched
    if not isinstance(t, torch.Tensor):
        t = torch.from_numpy(np.array(t))
    elif hasattr(t, "as_tensor"):
        t = t.as_tensor()
    if layout == "grid":
        if t.ndim != 3:
            raise ValueError(f"grid layout expects (K, S*p, S*p), got {tuple(t.shape)}.")
        tokens = grid_to_tokens(t, p)
    else:
        if t.ndim != 4 or tuple(t.shape[2:]) != (p, p):
            raise ValueError(f"patches layout expects (L, K, {p}, {p}), got {tuple(t.shape)}.")
        tokens = t
    if tokens.shape[0] != leaves.shape[0]:
        raise ValueError(f"{tokens.shape[0]} tokens given but the metadata has L={leaves.shape[0]}.")
    if tokens.dtype not in (torch.float16, torch.float32, torch.float64):
        tokens = tokens.float()
    binary_argmax = argmax and tokens.shape[1] == 2 and mode in ("bilinear", "nearest", "nearest-exact")
    if binary_argmax:  # resizing is linear: argmax of 2 classes = sign of the resized difference
        tokens = tokens[:, 1:2] - tokens[:, 0:1]
    k = tokens.shape[1]
    # on CPU without autograd, numpy's block assignment is several times faster than index_put
    on_cpu = tokens.device.type == "cpu" and not tokens.requires_grad
    if on_cpu:
        canvas_np = np.zeros((k, side, side), dtype=str(tokens.dtype).replace("torch.", ""))
        canvas = torch.from_numpy(canvas_np)
    else:
        canvas = tokens.new_zeros((k, side, side))
    real = np.nonzero(mask)[0]
    sizes = leaves[real, 2]
    for s in np.unique(sizes):
        s = int(s)
        idx = real[sizes == s]
        g = side // s
        sel = tokens[torch.as_tensor(idx, device=tokens.device)]
        if s != p:
            sel = _resize_up(sel, s, mode)
        by, bx = leaves[idx, 0] // s, leaves[idx, 1] // s
        if on_cpu:
            canvas_np.reshape(k, g, s, g, s)[:, by, :, bx, :] = sel.detach().numpy()
        else:
            by_t, bx_t = torch.as_tensor(by, device=tokens.device), torch.as_tensor(bx, device=tokens.device)
            canvas.view(k, g, s, g, s)[:, by_t, :, bx_t, :] = sel
    out = canvas[:, :h, :w] if crop else canvas
    if argmax:
        if binary_argmax:  # class 1 where its score is strictly larger (ties -> 0, like argmax)
            out = (out > 0).to(canvas.dtype)
        else:  # max(...).indices: first maximum on ties like argmax, much faster over dim 0
            out = out.max(dim=0, keepdim=True).indices.to(canvas.dtype)
    elif threshold is not None:
        out = (out > threshold).to(canvas.dtype)
    if isinstance(patched, torch.Tensor):
        res, *_ = convert_to_dst_type(out, dst=patched, dtype=out.dtype)
        return res
    return out.cpu().numpy()


def upper_bound_dice(
    label: ArrayLike,
    meta: Mapping[str, Any],
    num_classes: int | None = None,
    interpolation: str = "nearest",
    mode: str = "bilinear",
) -> np.ndarray:
    """Upper bound of the full-resolution Dice reachable through APF patching:
    ``Dice(GT, unpatch(patch(GT)))`` per foreground class.

    The label ``(1, H, W)`` (integer classes) is one-hot encoded, patched with ``meta``'s tree
    (``interpolation="nearest"`` as for training labels, or ``"area"`` for soft fractions),
    unpatched with ``mode`` and arg-maxed (for two classes: probability > 0.5).

    Returns:
        ``(num_classes - 1,)`` float64 Dice of classes ``1 .. num_classes - 1`` (NaN where a
        class is absent from both).
    """
    lab = _to_numpy(label)
    _check_chw(lab, "label")
    if lab.shape[0] != 1:
        raise ValueError(f"label must be (1, H, W) integer classes, got shape {tuple(lab.shape)}.")
    lab = lab[0].astype(np.int64)
    k = int(num_classes) if num_classes is not None else max(int(lab.max()) + 1, 2)
    onehot = (lab[None] == np.arange(k)[:, None, None]).astype(np.float32)
    patched = extract_patches(onehot, meta, interpolation=interpolation, layout="patches")
    rec = quadtree_unpatch(patched, meta, layout="patches", mode=mode, argmax=True)[0].astype(np.int64)
    dice = np.full(k - 1, np.nan)
    for c in range(1, k):
        a, b = lab == c, rec == c
        denom = int(a.sum()) + int(b.sum())
        if denom:
            dice[c - 1] = 2.0 * int(np.logical_and(a, b).sum()) / denom
    return dice


# ----------------------------------------------------------------------------- dictionary transforms
class AdaptivePatchd(MapTransform):
    """Dictionary APF patching: build the quadtree from ``source_key`` (default: the first key)
    and patch every key with it; the metadata goes to ``data[meta_key]`` (default
    ``f"{source_key}_apf"``) for :class:`AdaptiveUnpatchd`.

    Args:
        keys: keys to patch, e.g. ``("image", "label")``; each ``(C, H, W)`` with the same
            ``H, W`` as the source (``ValueError`` otherwise).
        patch_size, num_tokens, mode, min_size, max_depth, split_value, blur_kernel,
            canny_low, canny_high, window, edge_backend: see :func:`plan_quadtree`.
        interpolation: per key, ``"area"`` for images, ``"nearest"`` for label masks.
        layout: ``"grid"`` (UNETR pseudo-image) or ``"patches"`` (``(L, C, p, p)``).
        edge_key: optional key of a precomputed edge map ``(H, W)`` / ``(1, H, W)``.
        pad_value: per key, value of the power-of-two padding of non-square / non-power-of-two
            images (e.g. 255 for a white slide background; keep 0 for labels).
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int,
        num_tokens: int | None = None,
        mode: str = "fixed",
        min_size: int | None = None,
        max_depth: int | None = None,
        split_value: float = 0,
        blur_kernel: int = 3,
        canny_low: float = 100.0,
        canny_high: float = 200.0,
        window: Sequence[float] | None = None,
        edge_backend: str = "auto",
        interpolation: Sequence[str] | str = "area",
        layout: str = "grid",
        source_key: str | None = None,
        edge_key: str | None = None,
        meta_key: str | None = None,
        pad_value: Sequence[float] | float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key if source_key is not None else self.keys[0]
        self.meta_key = meta_key if meta_key is not None else f"{self.source_key}_apf"
        self.edge_key = edge_key
        self.interpolation = ensure_tuple_rep(interpolation, len(self.keys))
        self.layout = layout
        self.pad_value = ensure_tuple_rep(pad_value, len(self.keys))
        self.plan_kwargs = dict(
            patch_size=patch_size,
            num_tokens=num_tokens,
            mode=mode,
            min_size=min_size,
            max_depth=max_depth,
            split_value=split_value,
            blur_kernel=blur_kernel,
            canny_low=canny_low,
            canny_high=canny_high,
            window=window,
            edge_backend=edge_backend,
            layout=layout,
        )
        # validate the static arguments now, not on the first sample
        if mode not in APF_MODES:
            raise ValueError(f"mode must be one of {APF_MODES}, got {mode!r}.")
        if num_tokens is not None and layout == "grid":
            _grid_side(int(num_tokens))
        for interp in self.interpolation:
            if interp not in ("area", "nearest"):
                raise ValueError(f"interpolation must be 'area' or 'nearest', got {interp!r}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.source_key not in d:
            raise KeyError(f"AdaptivePatchd: source key {self.source_key!r} not in the data (keys: {list(d)}).")
        edges = d[self.edge_key] if self.edge_key is not None else None
        meta = plan_quadtree(d[self.source_key], edges=edges, **self.plan_kwargs)
        h, w = (int(v) for v in meta["spatial_shape"])
        for key, interp, pad in self.key_iterator(d, self.interpolation, self.pad_value):
            shape = tuple(d[key].shape)
            if len(shape) != 3 or shape[1:] != (h, w):
                raise ValueError(
                    f"AdaptivePatchd: '{key}' has shape {shape}, expected (C, {h}, {w}) like '{self.source_key}'."
                )
            d[key] = extract_patches(d[key], meta, interpolation=interp, layout=self.layout, pad_value=pad)
        d[self.meta_key] = meta
        return d


class AdaptiveUnpatchd(MapTransform):
    """Dictionary APF unpatching of one (decollated) sample: ``data[key]`` ``(K, S*p, S*p)``
    (or ``(L, K, p, p)`` with ``layout="patches"``) -> ``(K, H, W)`` using ``data[meta_key]``.

    Args:
        keys: prediction keys, e.g. ``"pred"``.
        meta_key: key of the APF metadata written by :class:`AdaptivePatchd` (``"image_apf"``).
        mode, argmax, threshold, layout: see :func:`quadtree_unpatch` (per key for ``mode``,
            ``argmax``, ``threshold``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        meta_key: str = "image_apf",
        mode: Sequence[str] | str = "bilinear",
        argmax: Sequence[bool] | bool = False,
        threshold: Sequence[float | None] | float | None = None,
        layout: str = "grid",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key = meta_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.argmax = ensure_tuple_rep(argmax, len(self.keys))
        self.threshold = ensure_tuple_rep(threshold, len(self.keys))
        self.layout = layout

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.meta_key not in d:
            raise KeyError(f"AdaptiveUnpatchd: APF metadata key {self.meta_key!r} not in the data (keys: {list(d)}).")
        meta = d[self.meta_key]
        for key, mode, argmax, thr in self.key_iterator(d, self.mode, self.argmax, self.threshold):
            d[key] = quadtree_unpatch(d[key], meta, layout=self.layout, mode=mode, argmax=argmax, threshold=thr)
        return d
