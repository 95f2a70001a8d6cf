"""APF dictionary transforms: thin wrappers of :class:`~monai_ext.transforms.AdaptivePatch` /
:class:`~monai_ext.transforms.AdaptiveUnpatch` (as MONAI's ``GridPatchd`` of ``GridPatch``), one quadtree per
sample shared by all keys, its metadata stored under ``meta_key`` so that it survives collation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from .array import AdaptivePatch, AdaptiveUnpatch, check_interpolation

__all__ = [
    "AdaptivePatchD",
    "AdaptivePatchDict",
    "AdaptivePatchd",
    "AdaptiveUnpatchD",
    "AdaptiveUnpatchDict",
    "AdaptiveUnpatchd",
]


class AdaptivePatchd(MapTransform):
    """Dictionary APF patching: build the quadtree from ``source_key`` (default: the first key)
    and patch every key with it; the metadata goes to ``data[meta_key]`` (default
    ``f"{source_key}_apf"``) for :class:`AdaptiveUnpatchd`.

    Args:
        keys: keys to patch, e.g. ``("image", "label")``; each ``(C, H, W)`` with the same
            ``H, W`` as the source (``ValueError`` otherwise).
        patch_size, num_tokens, mode, min_size, max_depth, split_value, blur_kernel,
            canny_low, canny_high, window, edge_backend: see :func:`~monai_ext.transforms.plan_quadtree`.
        interpolation: per key, ``"area"`` for images, ``"nearest"`` for label masks.
        layout: ``"grid"`` (UNETR pseudo-image) or ``"patches"`` (``(L, C, p, p)``).
        edge_key: optional key of a precomputed edge map ``(H, W)`` / ``(1, H, W)``.
        pad_value: per key, value of the power-of-two padding of non-square / non-power-of-two
            images (e.g. 255 for a white slide background; keep 0 for labels).
    """

    backend = AdaptivePatch.backend

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
        self.pad_value = ensure_tuple_rep(pad_value, len(self.keys))
        self.patcher = AdaptivePatch(
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
        for interp in self.interpolation:
            check_interpolation(interp)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.source_key not in d:
            raise KeyError(f"AdaptivePatchd: source key {self.source_key!r} not in the data (keys: {list(d)}).")
        edges = d[self.edge_key] if self.edge_key is not None else None
        meta = self.patcher.plan(d[self.source_key], edges=edges)
        h, w = (int(v) for v in meta["spatial_shape"])
        for key, interp, pad in self.key_iterator(d, self.interpolation, self.pad_value):
            shape = tuple(d[key].shape)
            if len(shape) != 3 or shape[1:] != (h, w):
                raise ValueError(
                    f"AdaptivePatchd: '{key}' has shape {shape}, expected (C, {h}, {w}) like '{self.source_key}'."
                )
            d[key] = self.patcher(d[key], meta, interpolation=interp, pad_value=pad)
        d[self.meta_key] = meta
        return d


class AdaptiveUnpatchd(MapTransform):
    """Dictionary APF unpatching of one (decollated) sample: ``data[key]`` ``(K, S*p, S*p)``
    (or ``(L, K, p, p)`` with ``layout="patches"``) -> ``(K, H, W)`` using ``data[meta_key]``.

    Args:
        keys: prediction keys, e.g. ``"pred"``.
        meta_key: key of the APF metadata written by :class:`AdaptivePatchd` (``"image_apf"``).
        mode, argmax, threshold, layout: see :func:`~monai_ext.transforms.quadtree_unpatch` (per key for
            ``mode``, ``argmax``, ``threshold``).
    """

    backend = AdaptiveUnpatch.backend

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
        self.unpatcher = AdaptiveUnpatch(layout=layout)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.meta_key not in d:
            raise KeyError(f"AdaptiveUnpatchd: APF metadata key {self.meta_key!r} not in the data (keys: {list(d)}).")
        meta = d[self.meta_key]
        for key, mode, argmax, thr in self.key_iterator(d, self.mode, self.argmax, self.threshold):
            d[key] = self.unpatcher(d[key], meta, mode=mode, argmax=argmax, threshold=thr)
        return d


AdaptivePatchD = AdaptivePatchDict = AdaptivePatchd
AdaptiveUnpatchD = AdaptiveUnpatchDict = AdaptiveUnpatchd
