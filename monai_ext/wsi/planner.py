"""The streaming APF planner of a whole-slide image (16K-64K px a side): the quadtree of the slide at a target
scale, built from edge counts gathered tile by tile, never from the whole image or edge map in memory.

1. The target scale: ``scale`` level-0 px per target px (``>= 1``), or ``resolution``, the longer side in target
   px (:func:`target_shape`). Target pixels are read from the pyramid level whose down-sample is the largest
   ``<= scale`` and resized with ``INTER_AREA`` (:func:`read_target_region`).
2. Edge counts (:func:`stream_edge_counts`): the target image is cut into ``tile x tile`` cores; each core is read
   with a ``margin`` of context on every side (clipped at the image border, so the border rule of the blur and
   of Canny's Sobel is the in-memory one there), passed through the same blur + Canny as
   :func:`~monai_ext.transforms.apf.edges.edges01`, cropped back to the core and summed per ``min_size`` cell.
   Tiles run in a thread pool (JPEG decoding and OpenCV release the GIL); memory is ``workers`` tiles plus the
   slide's bounded tile cache.
3. The tree from the counts alone (:func:`~monai_ext.transforms.apf.quadtree.plan_from_counts`), the same code
   as the in-memory :func:`~monai_ext.transforms.plan_quadtree`.

Tile-border bound. Blur (``k x k``), Sobel (3 x 3) and non-maximum suppression look at most ``k // 2 + 2`` px
beyond a pixel, so inside the read window, away from its clipped-off border by more than that, the gradient
magnitudes and thin-edge candidates equal those of the whole image; with ``margin >= k // 2 + 2`` this holds for
every core pixel. Only Canny's hysteresis reaches further: a weak pixel (gradient between ``canny_low`` and
``canny_high``) is kept when a chain of weak pixels links it to a strong one, and a chain has no length limit.
So a core pixel's edge bit can differ from the in-memory one only if it lies on a weak chain that runs more
than ``margin - k // 2 - 2`` px out of the core: an edge is missed when the chain's strong end lies outside
the window, or added when the chain reaches the window's own border band, whose gradients are wrong. Strong
pixels (gradient ``>= canny_high``) are never affected. Measured on the 4096 px synthetic slide (512 px tiles,
``k = 3``, 546,845 edge px): margin 0: 2,732 edge px differ; 2: 663; 3: 84; 4: 60; 8: 10; 16 and 32: none. On the
synthetic and real slides of ``tests/test_wsi_planner.py`` (margin 32) the leaves equal the in-memory plan's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..data.slide import SlideError, TiledSlide
from ..transforms.apf.edges import edges01
from ..transforms.apf.quadtree import block_counts, plan_from_counts, plan_settings
from ..transforms.apf.utils import is_pow2

logger = logging.getLogger(__name__)

__all__ = ["plan_slide", "read_target_region", "slide_geometry", "stream_edge_counts", "target_shape"]

#: level pixels read at once when resizing a box (larger boxes are read in blocks of output pixels)
CHUNK_PIXELS = 16 * 2**20
_EPS = 1e-6


def target_shape(
    level0_hw: tuple[int, int], resolution: int | None = None, scale: float | None = None
) -> tuple[tuple[int, int], float]:
    """``((h, w), scale)`` of the target image of a slide of level-0 size ``(H0, W0)``: exactly one of
    ``resolution`` (the longer side at the target scale, a power of two; ``scale = max(H0, W0) / resolution``)
    or ``scale`` (level-0 px per target px, ``>= 1``); ``h, w = ceil(H0 / scale), ceil(W0 / scale)``."""
    h0, w0 = (int(v) for v in level0_hw)
    if (resolution is None) == (scale is None):
        raise ValueError("give exactly one of resolution (target longer side) or scale (level-0 px per target px).")
    if resolution is not None:
        r = int(resolution)
        if not is_pow2(r):
            raise ValueError(f"resolution must be a power of two, got {resolution}.")
        if r > max(h0, w0):
            raise ValueError(f"resolution={r} is above the slide's longer side ({h0} x {w0}); leaves are never "
                             "up-sampled: use a smaller resolution or scale=1.")
        sc = max(h0, w0) / r
    else:
        sc = float(scale)
        if not math.isfinite(sc) or sc < 1:
            raise ValueError(f"scale must be a finite number >= 1 (level-0 px per target px), got {scale}.")
    h, w = (max(1, math.ceil(v / sc - _EPS)) for v in (h0, w0))
    return (h, w), sc


def slide_geometry(meta: Mapping[str, Any]) -> tuple[tuple[int, int], float]:
    """``((H0, W0), scale)`` of a slide plan (:func:`plan_slide`'s metadata; decollated is fine)."""
    try:
        h0, w0 = (int(v) for v in np.asarray(meta["level0_shape"]).reshape(-1))
        scale = float(np.asarray(meta["scale"]).reshape(()))
    except KeyError as e:
        raise KeyError(f"slide APF metadata misses {e}; expected the dict returned by plan_slide.") from None
    return (h0, w0), scale


def _read_block(slide: TiledSlide, level: int, box: tuple[float, float, float, float], out_h: int, out_w: int,
                dtype: type) -> np.ndarray:
    """``(out_h, out_w, 3)`` of the level-0 box ``(y0, x0, y1, x1)`` read from ``level``, ``INTER_AREA``-resized.
    Box edges on whole level pixels: exact area means; otherwise the box is widened to whole level pixels,
    resized, and cropped (error below half an output pixel)."""
    dsy, dsx = slide.downsample_yx(level)
    a0, b0, a1, b1 = box[0] / dsy, box[1] / dsx, box[2] / dsy, box[3] / dsx
    r0, c0, r1, c1 = math.floor(a0 + _EPS), math.floor(b0 + _EPS), math.ceil(a1 - _EPS), math.ceil(b1 - _EPS)
    r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    region = slide.read_region(level, r0, c0, r1 - r0, c1 - c0)
    if region.dtype != dtype:
        region = region.astype(dtype)
    exact = all(abs(v - round(v)) < _EPS for v in (a0, b0, a1, b1))
    if exact:
        if region.shape[:2] == (out_h, out_w):
            return region
        return cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA)
    fy, fx = (a1 - a0) / out_h, (b1 - b0) / out_w  # level px per output px
    hn, wn = max(out_h, round((r1 - r0) / fy)), max(out_w, round((c1 - c0) / fx))
    big = cv2.resize(region, (wn, hn), interpolation=cv2.INTER_AREA)
    oy, ox = min(max(round((a0 - r0) / fy), 0), hn - out_h), min(max(round((b0 - c0) / fx), 0), wn - out_w)
    return big[oy: oy + out_h, ox: ox + out_w]


def read_box(slide: TiledSlide, level: int, box: tuple[float, float, float, float], out_h: int, out_w: int,
             dtype: type = np.uint8) -> np.ndarray:
    """``(out_h, out_w, 3)`` ``dtype`` of the level-0 box ``(y0, x0, y1, x1)`` (white outside the slide), read
    from ``level`` and resized with ``INTER_AREA``; boxes above :data:`CHUNK_PIXELS` level pixels are read in
    blocks of output pixels (exact when the blocks fall on whole level pixels)."""
    dsy, dsx = slide.downsample_yx(level)
    y0, x0, y1, x1 = box
    fy, fx = (y1 - y0) / dsy / out_h, (x1 - x0) / dsx / out_w  # level px per output px
    if (fy * out_h + 2) * (fx * out_w + 2) <= CHUNK_PIXELS:
        return _read_block(slide, level, box, out_h, out_w, dtype)
    if (fy + 2) * (fx + 2) > CHUNK_PIXELS:
        raise SlideError(slide.path, f"one output pixel covers {fy:.0f} x {fx:.0f} px of level {level}, above "
                                     f"{CHUNK_PIXELS} px: the slide lacks a coarser pyramid level for this leaf")
    bw = max(1, min(out_w, int(math.sqrt(CHUNK_PIXELS) / (fx + 2))))
    bh = max(1, min(out_h, int(CHUNK_PIXELS / ((fy + 2) * (fx * bw + 2)))))
    out = np.empty((out_h, out_w, 3), dtype)
    sy, sx = (y1 - y0) / out_h, (x1 - x0) / out_w  # level-0 px per output px
    for i in range(0, out_h, bh):
        for j in range(0, out_w, bw):
            h, w = min(bh, out_h - i), min(bw, out_w - j)
            sub = (y0 + i * sy, x0 + j * sx, y0 + (i + h) * sy, x0 + (j + w) * sx)
            out[i: i + h, j: j + w] = _read_block(slide, level, sub, h, w, dtype)
    return out


def read_target_region(slide: TiledSlide, scale: float, y: int, x: int, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 of the slide at the target ``scale`` from target pixel ``(y, x)`` (target px -> level-0
    px times ``scale``), read from ``slide.best_level(scale)`` and resized with ``INTER_AREA`` (the rounded area
    mean when the box falls on whole level pixels); white outside the slide."""
    s = float(scale)
    return read_box(slide, slide.best_level(s), (y * s, x * s, (y + h) * s, (x + w) * s), int(h), int(w))


def stream_edge_counts(
    slide: TiledSlide,
    scale: float,
    cell: int,
    padded_side: int,
    *,
    tile: int = 2048,
    margin: int = 32,
    blur_kernel: int = 3,
    canny_low: float = 100.0,
    canny_high: float = 200.0,
    edge_backend: str = "auto",
    workers: int = 2,
    progress: bool = False,
) -> np.ndarray:
    """``(padded_side // cell, padded_side // cell)`` int64 edge-pixel counts per ``cell x cell`` block of the
    target-scale image (``ceil(H0 / scale) x ceil(W0 / scale)``, zero beyond it), computed tile by tile: each
    ``tile x tile`` core (``tile`` a multiple of ``cell``) is read with ``margin`` px of context (clipped at the
    image border), edge-mapped (blur + Canny, :func:`~monai_ext.transforms.apf.edges.edges01`) and cropped back
    to the core. ``workers`` threads; memory about ``workers`` tiles plus the slide's tile cache."""
    (h, w), scale = target_shape(slide.levels[0], scale=scale)
    cell, side, tile, margin, workers = int(cell), int(padded_side), int(tile), int(margin), int(workers)
    if not is_pow2(cell) or side % cell or side < max(h, w):
        raise ValueError(f"cell={cell} must be a power of two dividing padded_side={side} >= the target size "
                         f"{h} x {w}.")
    if tile < cell or tile % cell:
        raise ValueError(f"tile={tile} must be a positive multiple of cell={cell}.")
    if margin < 0 or workers < 1:
        raise ValueError(f"margin must be >= 0 and workers >= 1, got margin={margin}, workers={workers}.")
    edges01(np.zeros((3, 4, 4), np.uint8), blur_kernel, canny_low, canny_high, None, edge_backend)  # check once
    g = side // cell
    counts = np.zeros((g, g), np.int64)
    cores = [(ty, tx) for ty in range(0, h, tile) for tx in range(0, w, tile)]

    def work(core: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        ty, tx = core
        th, tw = min(tile, h - ty), min(tile, w - tx)
        y0, x0 = max(ty - margin, 0), max(tx - margin, 0)
        y1, x1 = min(ty + th + margin, h), min(tx + tw + margin, w)
        rgb = read_target_region(slide, scale, y0, x0, y1 - y0, x1 - x0)
        planes = np.stack(cv2.split(rgb))  # (3, h, w) contiguous planes: 4x faster grey than a strided view
        del rgb
        e = edges01(planes, blur_kernel, canny_low, canny_high, None, edge_backend)
        e = e[ty - y0: ty - y0 + th, tx - x0: tx - x0 + tw]
        gh, gw = -(-th // cell), -(-tw // cell)
        if (gh * cell, gw * cell) != (th, tw):
            e = np.pad(e, ((0, gh * cell - th), (0, gw * cell - tw)))
        return ty // cell, tx // cell, block_counts(np.ascontiguousarray(e), cell)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(pool.map(work, cores), total=len(cores), desc="APF edge counts", unit="tile", disable=not progress)
        for cy, cx, c in bar:
            counts[cy: cy + c.shape[0], cx: cx + c.shape[1]] = c
    logger.debug("%s: %d tiles of %d px at scale %.4g -> %d edge px", slide.path, len(cores), tile, scale,
                 int(counts.sum()))
    return counts


def plan_slide(
    slide: str | Path | TiledSlide,
    *,
    resolution: int | None = None,
    scale: float | None = None,
    patch_size: int,
    num_tokens: int | None = None,
    mode: str = "fixed",
    min_size: int | None = None,
    max_depth: int | None = None,
    split_value: float = 0,
    blur_kernel: int = 3,
    canny_low: float = 100.0,
    canny_high: float = 200.0,
    edge_backend: str = "auto",
    layout: str = "grid",
    tile: int = 2048,
    margin: int = 32,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """The APF quadtree of a whole slide at a target scale, from streamed edge counts.

    Args:
        slide: a slide file (SVS / pyramidal TIFF) or an open :class:`~monai_ext.data.slide.TiledSlide`.
        resolution, scale: exactly one (:func:`target_shape`).
        patch_size, num_tokens, mode, min_size, max_depth, split_value, blur_kernel, canny_low, canny_high,
            edge_backend, layout: as :func:`~monai_ext.transforms.plan_quadtree` on the target-scale image.
        tile, margin, workers, progress: see :func:`stream_edge_counts` (``tile`` is rounded up to a multiple of
            ``min_size``).

    Returns:
        :func:`~monai_ext.transforms.plan_quadtree`'s metadata (``leaves`` in target px of the padded square,
        ``mask``, ``spatial_shape`` = target ``(h, w)``, ``padded_size``, ``patch_size``, ``num_leaves``) plus
        ``level0_shape`` ``(2,)`` int64 and ``scale`` (float64 0-d array): arrays and ints only, so it survives
        MONAI's collation.
    """
    own = not isinstance(slide, TiledSlide)
    sl = TiledSlide(slide) if own else slide
    try:
        (h, w), sc = target_shape(sl.levels[0], resolution, scale)
        _, m, side, _ = plan_settings((h, w), patch_size=patch_size, num_tokens=num_tokens, mode=mode,
                                      min_size=min_size, max_depth=max_depth, layout=layout)
        counts = None
        if mode != "uniform":
            counts = stream_edge_counts(
                sl, sc, m, side, tile=-(-int(tile) // m) * m, margin=margin, blur_kernel=blur_kernel,
                canny_low=canny_low, canny_high=canny_high, edge_backend=edge_backend, workers=workers,
                progress=progress,
            )
        meta = plan_from_counts(counts, (h, w), patch_size=patch_size, num_tokens=num_tokens, mode=mode,
                                min_size=min_size, max_depth=max_depth, split_value=split_value, layout=layout)
        meta["level0_shape"] = np.array(sl.levels[0], dtype=np.int64)
        meta["scale"] = np.array(sc, dtype=np.float64)
    finally:
        if own:
            sl.close()
    logger.info("%s: %d x %d at scale %.4g -> %d leaves", sl.path, h, w, sc, meta["num_leaves"])
    return meta
