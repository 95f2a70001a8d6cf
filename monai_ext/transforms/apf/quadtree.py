"""APF steps 2 and 3, the quadtree: edge counts of every node from one summed-area table, the split rule of
each mode (``fixed``, ``threshold``, ``uniform``), leaves in Z-order, and the metadata (:func:`plan_quadtree`)
that patching and unpatching read back (:func:`meta_values`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...utils.zorder import grid_side, morton_encode
from . import utils
from .edges import edges01
from .utils import ArrayLike, check_chw, check_finite, cv2, is_pow2, next_pow2, to_numpy

logger = logging.getLogger(__name__)

__all__ = ["APF_MODES", "MAX_SIDE", "meta_values", "plan_from_counts", "plan_quadtree", "plan_settings"]

APF_MODES = ("fixed", "threshold", "uniform")
#: largest padded side supported (whole-slide images planned from streamed counts, ``monai_ext.wsi``; the
#: fixed-mode ranking is exact at any side, no packed sort key)
MAX_SIDE = 131072


def block_counts(e01: np.ndarray, size: int) -> np.ndarray:
    """Edge counts ``(H / size, W / size)`` int64 of the ``size x size`` blocks of a 0/1 map ``e01`` ``(H, W)``
    (both multiples of ``size``), from a summed-area table sampled every ``size`` pixels. Used on the whole
    padded square here and on each tile of a slide by the streaming planner."""
    h, w = e01.shape
    if size == 1:
        return e01.astype(np.int64)
    if utils.HAS_CV2:
        sat = cv2.integral(e01, sdepth=cv2.CV_32S if h * w < 2**31 else cv2.CV_64F)
        s = sat[::size, ::size].astype(np.int64)
    else:
        s = np.zeros((h // size + 1, w // size + 1), dtype=np.int64)
        s[1:, 1:] = e01.cumsum(axis=0, dtype=np.int64)[size - 1 :: size].cumsum(axis=1)[:, size - 1 :: size]
    return s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]


def _count_pyramid(finest: np.ndarray) -> list[np.ndarray]:
    """``[counts at depth 0 (1x1), ..., finest]``, each level the 2 x 2 sum of the next."""
    levels = [finest]
    while levels[-1].shape[0] > 1:
        c = levels[-1]
        h = c.shape[0] // 2
        levels.append(c.reshape(h, 2, h, 2).sum(axis=(1, 3)))
    return levels[::-1]


def _rank_splits(counts: list[np.ndarray], split: list[np.ndarray], k: int) -> list[np.ndarray]:
    """The ``k`` top-ranked split candidates (``split[d]`` masks) by (edge count desc, depth asc, Z-order asc),
    as per-level masks. Exact for any side (no packed sort key that could overflow 63 bits at 64K px): the
    ``k``-th largest count ``c_k`` from per-level partial sorts, every candidate above ``c_k``, then the ties at
    ``c_k`` level by level (shallow first), within a level by Morton code."""
    depth = len(split)
    if k <= 0:
        return [np.zeros_like(s) for s in split]
    vals = [counts[d][split[d]] for d in range(depth)]
    tops = [v if v.size <= k else np.partition(v, v.size - k)[v.size - k :] for v in vals]
    top = np.concatenate(tops)
    ck = np.partition(top, top.size - k)[top.size - k]
    remaining = k - sum(int(np.count_nonzero(v > ck)) for v in vals)
    out = []
    for d in range(depth):
        sel = split[d] & (counts[d] > ck)
        if remaining > 0:
            iy, ix = np.nonzero(split[d] & (counts[d] == ck))
            if iy.size > remaining:
                keep = np.argpartition(morton_encode(iy, ix), remaining - 1)[:remaining]
                iy, ix = iy[keep], ix[keep]
            sel[iy, ix] = True
            remaining -= iy.size
        out.append(sel)
    return out


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
    split: list[np.ndarray] = []
    if mode == "uniform":
        split = [np.ones((1 << d, 1 << d), dtype=bool) for d in range(depth)]
    else:
        assert counts is not None
        split = [counts[d] > split_value for d in range(depth)]
        n_cand = int(sum(int(np.count_nonzero(s)) for s in split))
        if mode == "fixed" and max_splits is not None and n_cand > max_splits:
            split = _rank_splits(counts, split, max_splits)
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


def _check_kinds(mode: str, layout: str, patch_size: int, min_size: int | None) -> tuple[int, int]:
    if mode not in APF_MODES:
        raise ValueError(f"mode must be one of {APF_MODES}, got {mode!r}.")
    if layout not in ("grid", "patches"):
        raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
    p = int(patch_size)
    if not is_pow2(p):
        raise ValueError(f"patch_size must be a power of two, got {patch_size}.")
    m = p if min_size is None else int(min_size)
    if not is_pow2(m) or m < p:
        raise ValueError(
            f"min_size must be a power of two >= patch_size={p} (leaves are never up-sampled), got {min_size}."
        )
    return p, m


def plan_settings(
    spatial_shape: Sequence[int],
    *,
    patch_size: int,
    num_tokens: int | None = None,
    mode: str = "fixed",
    min_size: int | None = None,
    max_depth: int | None = None,
    layout: str = "grid",
) -> tuple[int, int, int, int]:
    """Check the settings of a plan of an ``(H, W)`` image before any work; returns ``(p, min_size, N, depth)``:
    ``N`` the padded side (next power of two of ``max(H, W)``, at most :data:`MAX_SIDE`), ``depth`` the
    deepest split level. ``ValueError`` naming the problem otherwise."""
    p, m = _check_kinds(mode, layout, patch_size, min_size)
    h, w = (int(v) for v in spatial_shape)
    if h < 1 or w < 1:
        raise ValueError(f"empty image of spatial shape {(h, w)}.")
    side = next_pow2(max(h, w))
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
            grid_side(int(num_tokens))
    elif mode == "fixed":
        raise ValueError("mode='fixed' needs num_tokens (the sequence length L).")
    if max_depth is not None and int(max_depth) < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}.")
    depth = int(math.log2(side // m))
    if max_depth is not None and mode != "uniform":
        depth = min(depth, int(max_depth))
    return p, m, side, depth


def plan_from_counts(
    finest_counts: np.ndarray | None,
    spatial_shape: Sequence[int],
    *,
    patch_size: int,
    num_tokens: int | None = None,
    mode: str = "fixed",
    min_size: int | None = None,
    max_depth: int | None = None,
    split_value: float = 0,
    layout: str = "grid",
) -> dict[str, Any]:
    """The quadtree and APF metadata from edge counts alone (the streaming whole-slide planner's entry; what
    :func:`plan_quadtree` calls after counting).

    Args:
        finest_counts: ``(N / min_size, N / min_size)`` non-negative integer edge-pixel counts of the
            ``min_size x min_size`` blocks of the zero-padded ``N x N`` square (``N`` the next power of two of
            ``max(H, W)``); ``None`` only in ``"uniform"`` mode.
        spatial_shape: ``(H, W)`` of the image.
        patch_size, num_tokens, mode, min_size, max_depth, split_value, layout: as :func:`plan_quadtree`.

    Returns:
        :func:`plan_quadtree`'s metadata dict.
    """
    p, m, side, depth = plan_settings(
        spatial_shape, patch_size=patch_size, num_tokens=num_tokens, mode=mode, min_size=min_size,
        max_depth=max_depth, layout=layout,
    )
    h, w = (int(v) for v in spatial_shape)
    counts = None
    if mode != "uniform":
        if finest_counts is None:
            raise ValueError(f"mode={mode!r} needs the edge counts (finest_counts is None).")
        finest = np.asarray(finest_counts)
        g = side // m
        if finest.shape != (g, g):
            raise ValueError(
                f"finest_counts of shape {tuple(finest.shape)}: expected ({g}, {g}), the {m} x {m} blocks of the "
                f"{side} x {side} padded square of a {h} x {w} image."
            )
        if not (np.issubdtype(finest.dtype, np.integer) or finest.dtype == bool):
            raise ValueError(f"finest_counts must hold integer counts, got dtype {finest.dtype}.")
        finest = finest.astype(np.int64, copy=False)
        if finest.size and int(finest.min()) < 0:
            raise ValueError("finest_counts holds negative counts.")
        counts = _count_pyramid(finest)

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
    _check_kinds(mode, layout, patch_size, min_size)
    arr = None
    if image is not None:
        arr = to_numpy(image)
        check_chw(arr, "image")
        h, w = int(arr.shape[1]), int(arr.shape[2])
    elif spatial_shape is not None:
        h, w = (int(v) for v in spatial_shape)
    elif edges is not None:
        h, w = to_numpy(edges).shape[-2:]
    else:
        raise ValueError("plan_quadtree needs an image, an edge map or a spatial_shape.")
    _, m, side, _ = plan_settings(
        (h, w), patch_size=patch_size, num_tokens=num_tokens, mode=mode, min_size=min_size, max_depth=max_depth,
        layout=layout,
    )
    finest = None
    if mode != "uniform":
        if edges is not None:
            e = to_numpy(edges)
            if e.ndim == 3 and e.shape[0] == 1:
                e = e[0]
            if e.shape != (h, w):
                raise ValueError(f"edge map shape {tuple(e.shape)} differs from the image's spatial shape {(h, w)}.")
            e01 = (e != 0).astype(np.uint8)
        else:
            if arr is None:
                raise ValueError(f"mode={mode!r} needs the image (or a precomputed edge map).")
            check_finite(arr, "image")
            e01 = edges01(arr, blur_kernel, canny_low, canny_high, window, edge_backend)
        if (h, w) != (side, side):
            padded = np.zeros((side, side), dtype=np.uint8)
            padded[:h, :w] = e01
            e01 = padded
        finest = block_counts(np.ascontiguousarray(e01), m)
    elif arr is not None:
        check_finite(arr, "image")
    return plan_from_counts(
        finest, (h, w), patch_size=patch_size, num_tokens=num_tokens, mode=mode, min_size=min_size,
        max_depth=max_depth, split_value=split_value, layout=layout,
    )


def meta_values(meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """``leaves, mask, H, W, N, p`` of one sample's metadata (:func:`plan_quadtree`'s dict, also after
    ``decollate_batch``); ``KeyError`` / ``ValueError`` for anything else (e.g. a batched one)."""
    try:
        leaves = to_numpy(meta["leaves"]).astype(np.int64)
        mask = to_numpy(meta["mask"]).astype(bool)
        h, w = (int(v) for v in to_numpy(meta["spatial_shape"]).reshape(-1))
        side = int(to_numpy(meta["padded_size"]).reshape(()))
        p = int(to_numpy(meta["patch_size"]).reshape(()))
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
