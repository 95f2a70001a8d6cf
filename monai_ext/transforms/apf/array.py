"""APF array transforms, in the way of MONAI's ``GridPatch``: :class:`AdaptivePatch` (quadtree of one image,
every leaf resized to ``p x p``) and :class:`AdaptiveUnpatch` (per-leaf predictions back to the image)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from monai.transforms import Transform
from monai.utils import TransformBackends

from ...utils.zorder import grid_side
from .functional import extract_patches, quadtree_unpatch
from .quadtree import APF_MODES, plan_quadtree
from .utils import ArrayLike

__all__ = ["AdaptivePatch", "AdaptiveUnpatch"]

INTERPOLATIONS = ("area", "nearest")


def check_interpolation(interpolation: str) -> None:
    """``ValueError`` unless ``interpolation`` is one of :data:`INTERPOLATIONS`."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be 'area' or 'nearest', got {interpolation!r}.")


class AdaptivePatch(Transform):
    """APF patching of one channel-first 2D image ``(C, H, W)``.

    :meth:`plan` builds the quadtree (edge map, split rule, Z-order) and returns its metadata;
    ``__call__(img, meta)`` resizes every leaf of that tree to ``p x p``, so a label is patched with the
    image's tree (``interpolation="nearest"``). Without ``meta`` the tree is planned from ``img``::

        patch = AdaptivePatch(patch_size=4, num_tokens=256)
        meta = patch.plan(image)
        grid = patch(image, meta)                               # (C, 16 * 4, 16 * 4)
        label_grid = patch(label, meta, interpolation="nearest")

    Args:
        patch_size, num_tokens, mode, min_size, max_depth, split_value, blur_kernel, canny_low, canny_high,
            window, edge_backend: see :func:`~monai_ext.transforms.plan_quadtree`.
        interpolation: ``"area"`` (images) or ``"nearest"`` (label masks); see
            :func:`~monai_ext.transforms.extract_patches`.
        layout: ``"grid"`` (UNETR pseudo-image ``(C, S*p, S*p)``) or ``"patches"`` (``(L, C, p, p)``).
        pad_value: value of the power-of-two padding of non-square / non-power-of-two images.

    The static arguments are checked here, not on the first image.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
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
        interpolation: str = "area",
        layout: str = "grid",
        pad_value: float = 0.0,
    ) -> None:
        if mode not in APF_MODES:
            raise ValueError(f"mode must be one of {APF_MODES}, got {mode!r}.")
        if num_tokens is not None and layout == "grid":
            grid_side(int(num_tokens))
        check_interpolation(interpolation)
        self.interpolation = interpolation
        self.layout = layout
        self.pad_value = pad_value
        self.plan_kwargs: dict[str, Any] = {
            "patch_size": patch_size,
            "num_tokens": num_tokens,
            "mode": mode,
            "min_size": min_size,
            "max_depth": max_depth,
            "split_value": split_value,
            "blur_kernel": blur_kernel,
            "canny_low": canny_low,
            "canny_high": canny_high,
            "window": window,
            "edge_backend": edge_backend,
            "layout": layout,
        }

    def plan(self, img: ArrayLike, edges: ArrayLike | None = None) -> dict[str, Any]:
        """The quadtree metadata of ``img`` ``(C, H, W)`` (``edges``: optional precomputed edge map ``(H, W)``)."""
        return plan_quadtree(img, edges=edges, **self.plan_kwargs)

    def __call__(
        self,
        img: ArrayLike,
        meta: Mapping[str, Any] | None = None,
        interpolation: str | None = None,
        pad_value: float | None = None,
    ) -> ArrayLike:
        """Patch ``img`` ``(C, H, W)`` with the tree ``meta`` (default: :meth:`plan` of ``img``); same array type
        out. ``interpolation`` / ``pad_value`` override the constructor's for this call."""
        if meta is None:
            meta = self.plan(img)
        interpolation = self.interpolation if interpolation is None else interpolation
        pad_value = self.pad_value if pad_value is None else pad_value
        return extract_patches(img, meta, interpolation=interpolation, layout=self.layout, pad_value=pad_value)


class AdaptiveUnpatch(Transform):
    """APF unpatching of one sample: per-leaf predictions ``(K, S*p, S*p)`` (``layout="grid"``) or
    ``(L, K, p, p)`` (``"patches"``) are resized into their leaf boxes -> ``(K, H, W)``.

    Args:
        mode, argmax, threshold, layout, crop: see :func:`~monai_ext.transforms.quadtree_unpatch`.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        mode: str = "bilinear",
        argmax: bool = False,
        threshold: float | None = None,
        layout: str = "grid",
        crop: bool = True,
    ) -> None:
        if layout not in ("grid", "patches"):
            raise ValueError(f"layout must be 'grid' or 'patches', got {layout!r}.")
        self.mode = mode
        self.argmax = argmax
        self.threshold = threshold
        self.layout = layout
        self.crop = crop

    def __call__(
        self,
        img: ArrayLike,
        meta: Mapping[str, Any],
        mode: str | None = None,
        argmax: bool | None = None,
        threshold: float | None = None,
    ) -> ArrayLike:
        """Unpatch ``img`` with the sample's APF metadata ``meta`` (:meth:`AdaptivePatch.plan`; decollated is
        fine). ``mode`` / ``argmax`` / ``threshold`` override the constructor's for this call (``None``: keep)."""
        return quadtree_unpatch(
            img,
            meta,
            layout=self.layout,
            mode=self.mode if mode is None else mode,
            argmax=self.argmax if argmax is None else argmax,
            threshold=self.threshold if threshold is None else threshold,
            crop=self.crop,
        )
