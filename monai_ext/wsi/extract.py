"""APF tokens of a whole slide from its plan (:func:`~monai_ext.wsi.plan_slide`): every leaf read from the pyramid
level that best matches its size, never the whole slide in memory.

A leaf ``(y, x, s)`` (target px of the padded square) covers the level-0 box ``(y, x, s) * scale``; its ``p x p``
token has ``f0 = s * scale / p`` level-0 px per token pixel, so it is read from ``slide.best_level(f0)`` (the
coarsest level with at least one pixel per token pixel) and area-resized to ``p x p``. Labels are sampled by
nearest (the centre of each token pixel) from a level-0 mask, decoding only the mask tiles the samples touch.
Tokens are laid out as :func:`~monai_ext.transforms.extract_patches` does (Z-curve grid or stack).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.slide import SlideError, TiledMask, TiledSlide
from ..transforms.apf.quadtree import meta_values
from ..utils.zorder import tokens_to_grid
from .planner import read_box, slide_geometry

logger = logging.getLogger(__name__)

__all__ = ["extract_mask_patches", "extract_slide_patches"]


def _layout(tokens: np.ndarray, layout: str) -> np.ndarray:
    return tokens_to_grid(tokens) if layout == "grid" else tokens


def extract_slide_patches(
    slide: str | Path | TiledSlide,
    meta: Mapping[str, Any],
    *,
    layout: str = "grid",
    workers: int = 2,
    progress: bool = False,
) -> np.ndarray:
    """Every leaf of a slide plan resized to ``p x p`` from the best pyramid level (``INTER_AREA`` in float32:
    area means of that level's pixels; white outside the slide; padding tokens zero).

    Returns ``(3, S*p, S*p)`` (``layout="grid"``, ``S = sqrt(L)``) or ``(L, 3, p, p)`` (``"patches"``) float32 in
    0..255, the token order and placement of :func:`~monai_ext.transforms.extract_patches`."""
    if layout not in ("grid", "patches"):
        raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
    leaves, mask, _, _, _, p = meta_values(meta)
    (h0, w0), scale = slide_geometry(meta)
    own = not isinstance(slide, TiledSlide)
    sl = TiledSlide(slide) if own else slide
    try:
        if tuple(sl.levels[0]) != (h0, w0):
            raise SlideError(sl.path, f"level 0 is {sl.levels[0][0]} x {sl.levels[0][1]}, the plan was made for "
                                      f"{h0} x {w0}")
        tokens = np.zeros((leaves.shape[0], 3, p, p), np.float32)

        def work(i: int) -> None:
            y, x, s = (float(v) * scale for v in leaves[i])
            if y >= h0 or x >= w0:  # wholly in the padding beyond the slide
                tokens[i] = 255.0
                return
            level = sl.best_level(s / p)
            tokens[i] = read_box(sl, level, (y, x, y + s, x + s), p, p, np.float32).transpose(2, 0, 1)

        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            real = np.nonzero(mask)[0].tolist()
            for _ in tqdm(pool.map(work, real), total=len(real), desc="APF leaves", unit="leaf", disable=not progress):
                pass
    finally:
        if own:
            sl.close()
    return _layout(tokens, layout)


def extract_mask_patches(mask_path: str | Path, meta: Mapping[str, Any], *, layout: str = "grid") -> np.ndarray:
    """Labels of every leaf by nearest sampling from a level-0 mask TIFF (tiled or stripped, one channel, e.g.
    uint8 ``{0, 1}``): token pixel ``(i, j)`` of leaf ``(y, x, s)`` takes the target coordinate
    ``t = y + i * f + f // 2`` (``f = s / p``), i.e. level-0 row ``floor((t + 0.5) * scale)`` (columns alike);
    0 outside the mask; only the mask tiles holding a sample are decoded. At ``scale = 1`` this equals
    :func:`~monai_ext.transforms.extract_patches` ``(mask, meta, "nearest")``.

    Returns ``(1, S*p, S*p)`` (``layout="grid"``) or ``(L, 1, p, p)``, the mask's dtype; padding tokens 0."""
    if layout not in ("grid", "patches"):
        raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
    leaves, mask, _, _, _, p = meta_values(meta)
    (h0, w0), scale = slide_geometry(meta)
    real = np.nonzero(mask)[0]
    y, x, s = (leaves[real, k] for k in range(3))
    f = s // p
    i = np.arange(p, dtype=np.int64)
    ty = y[:, None] + i[None, :] * f[:, None] + (f // 2)[:, None]  # (n, p) target coordinates
    tx = x[:, None] + i[None, :] * f[:, None] + (f // 2)[:, None]
    ys = np.floor((ty + 0.5) * scale).astype(np.int64)
    xs = np.floor((tx + 0.5) * scale).astype(np.int64)
    with TiledMask(mask_path) as m:
        if m.shape != (h0, w0):
            raise SlideError(mask_path, f"mask of {m.shape[0]} x {m.shape[1]} px differs from the slide's level 0 "
                                        f"({h0} x {w0}) the plan was made for")
        tokens = np.zeros((leaves.shape[0], 1, p, p), m.dtype)
        tokens[real, 0] = m.sample(np.broadcast_to(ys[:, :, None], (len(real), p, p)),
                                   np.broadcast_to(xs[:, None, :], (len(real), p, p)))
    return _layout(tokens, layout)
