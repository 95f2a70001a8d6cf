"""APF steps 4-6 as functions (the functional forms of :class:`~monai_ext.transforms.AdaptivePatch` /
:class:`~monai_ext.transforms.AdaptiveUnpatch`): resize every quadtree leaf to ``p x p`` and lay the tokens
out (:func:`extract_patches`, :func:`quadtree_patch`), and put per-leaf predictions back on the image canvas
(:func:`quadtree_unpatch`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_dst_type

from ...utils.zorder import grid_side, grid_to_tokens, zorder_grid
from . import utils
from .quadtree import meta_values, plan_quadtree
from .utils import ArrayLike, check_chw, cv2, to_numpy

__all__ = ["extract_patches", "leaf_tokens", "quadtree_patch", "quadtree_unpatch"]


def _sum_dtype(dtype: np.dtype, block: int) -> np.dtype:
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float64)
    is_bool = dtype == np.dtype(bool)  # np.dtype equality
    if is_bool or (np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize <= 2):
        vmax = 1 if is_bool else np.iinfo(dtype).max
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
    leaves, mask, h, w, side, p = meta_values(meta)
    arr = to_numpy(x)
    check_chw(arr, "array to patch")
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
        side_g = grid_side(n_tok)
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
    elif utils.HAS_CV2:
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


def leaf_tokens(patched: ArrayLike, meta: Mapping[str, Any], layout: str = "grid") -> torch.Tensor:
    """The per-leaf predictions ``(L, K, p, p)`` of one sample's ``patched`` output, ``(K, S*p, S*p)``
    (``layout="grid"``) or ``(L, K, p, p)`` (``"patches"``), checked against its APF metadata ``meta``; a tensor
    on ``patched``'s device (numpy input: CPU)."""
    leaves, _mask, _h, _w, _side, p = meta_values(meta)
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
    return tokens


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
    leaves, mask, h, w, side, p = meta_values(meta)
    tokens = leaf_tokens(patched, meta, layout)
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
