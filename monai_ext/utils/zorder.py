"""Z-order (Morton) helpers: codes of grid cells, the Z-curve over a square grid, and the "grid" token layout
(token ``i`` at the ``i``-th Z-curve cell of an ``S x S`` grid) used by APF pseudo-images.

Pure numpy / torch, nothing of ``monai_ext`` above :mod:`monai_ext.utils`: the APF transforms, the metric
and :class:`monai_ext.networks.APFUNETR` all import it from here.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["grid_side", "grid_to_tokens", "morton_encode", "tokens_to_grid", "zorder_grid", "zorder_to_raster"]

ArrayLike = Any  # np.ndarray | torch.Tensor (incl. MetaTensor)


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


def grid_side(num_tokens: int) -> int:
    """Side ``S`` of the square grid of ``L = S*S`` tokens (``ValueError`` naming nearby squares otherwise)."""
    side = math.isqrt(int(num_tokens))
    if side * side != int(num_tokens):
        raise ValueError(
            f"num_tokens={num_tokens} is not a perfect square: the 'grid' layout needs L = S*S tokens "
            f"(e.g. {side * side} or {(side + 1) ** 2}); use layout='patches' for other lengths."
        )
    return side


def tokens_to_grid(tokens: ArrayLike) -> ArrayLike:
    """``(L, C, p, p)`` -> ``(C, S*p, S*p)`` with token ``i`` at the ``i``-th Z-curve cell of the
    ``S x S`` grid (``S = sqrt(L)``). Numpy or torch in, same type out."""
    n, c, p, p2 = tokens.shape
    if p != p2:
        raise ValueError(f"tokens must be (L, C, p, p), got {tuple(tokens.shape)}.")
    side = grid_side(n)
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
    side = grid_side(n)
    rows, cols = zorder_grid(side)
    perm = np.argsort(rows * side + cols)  # raster position -> token index
    if isinstance(x, torch.Tensor):
        return x.index_select(axis, torch.as_tensor(perm, device=x.device))
    return np.take(np.asarray(x), perm, axis=axis)
