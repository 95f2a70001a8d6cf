"""APF unpatching onto a whole slide: per-leaf predictions rendered region by region at the slide's level-0 size
and written as a pyramidal TIFF, never as one array.

:func:`~monai_ext.transforms.quadtree_unpatch` builds the whole ``(K, N, N)`` canvas; at 64K px that is 16 GiB
per class, so here every output pixel is computed on its own from the leaf that holds it. Level ``k`` pixel
``(r, c)`` has its centre at level-0 ``((r + 0.5) 2^k, (c + 0.5) 2^k)``, i.e. at target coordinate ``t`` =
that / ``scale``; inside leaf ``(y, x, s)`` the ``p x p`` prediction is interpolated bilinearly at source
coordinate ``(t - y) p / s - 0.5`` (clamped), the rule of ``F.interpolate(..., align_corners=False)``. At
``scale = 1`` and level 0 this is exactly ``quadtree_unpatch`` (tested), and every pyramid level is rendered
from the leaves directly, not down-sampled from level 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..transforms.apf.functional import leaf_tokens
from ..transforms.apf.quadtree import meta_values
from ..utils.tiff_pyramid import write_pyramid
from .planner import slide_geometry

__all__ = ["LeafRenderer", "write_prediction_pyramid"]


def _axis_weights(t: np.ndarray, start: int, size: int, p: int) -> np.ndarray:
    """``(len(t), p)`` bilinear weights of target coordinates ``t`` (pixel centres) inside a leaf
    ``[start, start + size)`` resized from ``p`` samples (``align_corners=False``, clamped at the borders)."""
    u = np.maximum((t - start) * (p / size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(u).astype(np.int64), p - 1)
    i1 = np.minimum(i0 + 1, p - 1)
    w1 = u - i0
    a = np.zeros((t.shape[0], p), dtype=np.float64)
    rows = np.arange(t.shape[0])
    np.add.at(a, (rows, i0), 1.0 - w1)
    np.add.at(a, (rows, i1), w1)
    return a


class LeafRenderer:
    """Renders the unpatched prediction of one slide region by region.

    Args:
        tokens: ``(n, K, p, p)`` per-leaf predictions of the real leaves (logits or probabilities).
        leaves: ``(n, 3)`` ``(y, x, size)`` of those leaves in target pixels.
        scale: level-0 pixels per target pixel.
        level0_shape: ``(H0, W0)`` of the slide.
    """

    def __init__(self, tokens: np.ndarray, leaves: np.ndarray, scale: float, level0_shape: tuple[int, int]) -> None:
        if tokens.ndim != 4 or tokens.shape[0] != leaves.shape[0] or tokens.shape[2] != tokens.shape[3]:
            raise ValueError(f"tokens must be (n, K, p, p) for n={leaves.shape[0]} leaves, got {tokens.shape}.")
        self.tokens = np.asarray(tokens, dtype=np.float64)
        self.leaves = np.asarray(leaves, dtype=np.int64)
        self.scale = float(scale)
        self.level0_shape = level0_shape
        self.p = int(tokens.shape[-1])

    def _centres(self, level: int, start: int, length: int) -> np.ndarray:
        return (np.arange(start, start + length, dtype=np.float64) + 0.5) * (2.0**level) / self.scale

    def values(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(K, h, w)`` float64 prediction of the region at ``level``; pixels no leaf covers are 0."""
        ty, tx = self._centres(level, y, h), self._centres(level, x, w)
        ly, lx, ls = self.leaves[:, 0], self.leaves[:, 1], self.leaves[:, 2]
        hit = np.flatnonzero((ly <= ty[-1]) & (ly + ls > ty[0]) & (lx <= tx[-1]) & (lx + ls > tx[0]))
        out = np.zeros((self.tokens.shape[1], h, w), dtype=np.float64)
        for i in hit:
            y0, x0, s = int(ly[i]), int(lx[i]), int(ls[i])
            r0, r1 = np.searchsorted(ty, y0, "left"), np.searchsorted(ty, y0 + s, "left")
            c0, c1 = np.searchsorted(tx, x0, "left"), np.searchsorted(tx, x0 + s, "left")
            if r0 == r1 or c0 == c1:
                continue
            ay = _axis_weights(ty[r0:r1], y0, s, self.p)
            ax = _axis_weights(tx[c0:c1], x0, s, self.p)
            out[:, r0:r1, c0:c1] = np.einsum("rp,kpq,cq->krc", ay, self.tokens[i], ax, optimize=True)
        return out

    def labels(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(h, w)`` uint8 class index (first maximum on ties, as ``argmax``)."""
        v = self.values(level, y, x, h, w)
        if v.shape[0] == 1:
            return (v[0] > 0).astype(np.uint8)
        return v.argmax(axis=0).astype(np.uint8)


def _real_tokens(patched: Any, meta: Mapping[str, Any], layout: str) -> tuple[np.ndarray, np.ndarray]:
    """``(n, K, p, p)`` float32 predictions and ``(n, 3)`` boxes of the real (not padding) leaves."""
    tokens = leaf_tokens(patched, meta, layout).detach().float().cpu().numpy()
    leaves, mask = meta_values(meta)[:2]
    real = np.flatnonzero(mask)
    return tokens[real], leaves[real]


def write_prediction_pyramid(
    path: str | Path,
    patched: Any,
    meta: Mapping[str, Any],
    *,
    layout: str = "grid",
    tile: int = 512,
    min_side: int = 512,
    mpp: float | None = None,
    workers: int = 1,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the class map of one slide as a pyramidal TIFF (uint8 class index, zlib tiles) whose level 0 has the
    slide's level-0 size; every level rendered tile by tile from the leaves (:class:`LeafRenderer`).

    Args:
        patched: ``(K, S*p, S*p)`` (``layout="grid"``) or ``(L, K, p, p)`` per-leaf logits / probabilities
            (a 2-class prediction is decided by the sign of the class-1 minus class-0 difference).
        meta: the slide plan (:func:`~monai_ext.wsi.plan_slide`; decollated is fine).
        tile, min_side, mpp, workers, progress, overwrite: see :func:`~monai_ext.utils.tiff_pyramid.write_pyramid`.
    """
    level0, scale = slide_geometry(meta)
    tokens, leaves = _real_tokens(patched, meta, layout)
    if tokens.shape[1] == 2:  # linear resizing: the sign of the resized difference decides, as argmax does
        tokens = tokens[:, 1:2] - tokens[:, 0:1]
    renderer = LeafRenderer(tokens, leaves, scale, level0)
    write_pyramid(path, level0, renderer.labels, channels=1, dtype=np.uint8, tile=tile, min_side=min_side,
                  compression="zlib", mpp=mpp, overwrite=overwrite, workers=workers, progress=progress,
                  description="monai_ext APF prediction: uint8 class index")
    return Path(path)
