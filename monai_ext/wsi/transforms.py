"""Dictionary transforms for whole slides, the slide-path forms of :class:`~monai_ext.transforms.AdaptivePatchd`
and of unpatching: :class:`SlideAdaptivePatchd` plans the quadtree of a slide file by streaming
(:func:`~monai_ext.wsi.plan_slide`) and reads every leaf from the best pyramid level; :class:`SlidePredictionWriterd`
writes a prediction back as a pyramidal TIFF at the slide's level-0 size (:func:`write_prediction_pyramid`)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..data.slide import TiledSlide, slide_id
from ..transforms.apf.quadtree import meta_values
from ..utils.zorder import grid_side, zorder_grid
from .extract import extract_mask_patches, extract_slide_patches
from .planner import plan_slide
from .unpatch import write_prediction_pyramid

logger = logging.getLogger(__name__)

__all__ = ["MaskPaddingTokensd", "SlideAdaptivePatchd", "SlidePredictionWriterd"]


class SlideAdaptivePatchd(MapTransform):
    """APF patching of a whole slide given by its path.

    ``data[image_key]`` is a slide file (Aperio SVS / pyramidal TIFF); the quadtree is planned at the target
    scale (``resolution``: the longer side in target pixels, or ``scale``: level-0 pixels per target pixel) from
    edge counts streamed tile by tile, and every leaf is read from the pyramid level that best matches its size.
    The other ``keys`` are level-0 label masks (TIFF, uint8 class index), patched by nearest sampling with the
    same tree. Output: ``image`` ``(3, S*p, S*p)`` float32 in ``[0, 1]`` (``layout="grid"``), labels
    ``(1, S*p, S*p)`` float32, the plan under ``meta_key`` (default ``"image_apf"``, as ``AdaptivePatchd``; it
    also holds ``level0_shape`` and ``scale``) and the slide path under ``path_key`` for the writer.

    Args:
        keys: the image key first, then label keys, e.g. ``("image", "label")``.
        resolution, scale, patch_size, num_tokens, mode, min_size, max_depth, split_value, blur_kernel, canny_low,
            canny_high, edge_backend, layout, tile, margin, workers, progress: see :func:`~monai_ext.wsi.plan_slide`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int,
        num_tokens: int | None = None,
        resolution: int | None = None,
        scale: float | None = None,
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
        meta_key: str | None = None,
        path_key: str = "slide_path",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if (resolution is None) == (scale is None):
            raise ValueError("give exactly one of resolution (target side in pixels) or scale (level-0 px per pixel).")
        self.image_key = self.keys[0]
        self.meta_key = meta_key or f"{self.image_key}_apf"
        self.path_key = path_key
        self.layout = layout
        self.workers = workers
        self.progress = progress
        self.plan_kwargs: dict[str, Any] = {
            "resolution": resolution, "scale": scale, "patch_size": patch_size, "num_tokens": num_tokens,
            "mode": mode, "min_size": min_size, "max_depth": max_depth, "split_value": split_value,
            "blur_kernel": blur_kernel, "canny_low": canny_low, "canny_high": canny_high,
            "edge_backend": edge_backend, "layout": layout, "tile": tile, "margin": margin, "workers": workers,
            "progress": progress,
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        path = d[self.image_key]
        if not isinstance(path, (str, Path)):
            raise TypeError(f"{self.image_key!r} must be a slide path for SlideAdaptivePatchd, "
                            f"got {type(path).__name__}.")
        with TiledSlide(path) as slide:
            meta = plan_slide(slide, **self.plan_kwargs)
            image = extract_slide_patches(slide, meta, layout=self.layout, workers=self.workers, progress=self.progress)
        logger.debug("%s: %d leaves at scale %.3f", path, int(meta["num_leaves"]), float(meta["scale"]))
        d[self.image_key] = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        for key in self.key_iterator(d):
            if key == self.image_key:
                continue
            d[key] = torch.from_numpy(extract_mask_patches(d[key], meta, layout=self.layout).astype(np.float32))
        d[self.meta_key] = meta
        d[self.path_key] = str(path)
        return d


class SlidePredictionWriterd(MapTransform):
    """Writes ``data[key]`` (per-leaf logits / probabilities of one slide, ``(K, S*p, S*p)``) as
    ``<output_dir>/<slide name>_<postfix>.tif``: a pyramidal TIFF of uint8 class indices at the slide's level-0
    size (:func:`write_prediction_pyramid`), and puts the written path under ``f"{key}_path"``.

    An existing file is refused (``FileExistsError``) unless ``overwrite``: a prediction never silently replaces
    another file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        meta_key: str = "image_apf",
        path_key: str = "slide_path",
        postfix: str = "prediction",
        layout: str = "grid",
        tile: int = 512,
        workers: int = 1,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.meta_key, self.path_key, self.postfix = meta_key, path_key, postfix
        self.layout, self.tile, self.workers, self.overwrite = layout, tile, workers, overwrite

    def output_path(self, slide_path: str | Path) -> Path:
        """``<output_dir>/<slide name without suffix>_<postfix>.tif``."""
        return self.output_dir / f"{slide_id(slide_path)}_{self.postfix}.tif"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for key in self.key_iterator(d):
            out = self.output_path(d[self.path_key])
            write_prediction_pyramid(out, d[key], d[self.meta_key], layout=self.layout, tile=self.tile,
                                     workers=self.workers, overwrite=self.overwrite)
            logger.info("wrote %s", out)
            d[f"{key}_path"] = str(out)
        return d



class MaskPaddingTokensd(MapTransform):
    """Sets the grid cells of padding tokens to ``value`` (background) in ``(C, S*p, S*p)`` token grids, so that a
    metric on the token grid (patch-space Dice of a validation) counts only real leaves.

    Args:
        keys: token grids of one sample, e.g. the arg-maxed ``pred`` and the patched ``label``.
        meta_key: the sample's APF metadata (``mask`` (L,) bool, ``patch_size``).
    """

    def __init__(self, keys: KeysCollection, meta_key: str = "image_apf", value: float = 0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key, self.value = meta_key, value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        _leaves, mask, _h, _w, _side, p = meta_values(d[self.meta_key])
        padded = np.flatnonzero(~mask)
        if padded.size == 0:
            return d
        rows, cols = zorder_grid(grid_side(mask.shape[0]))
        for key in self.key_iterator(d):
            x = d[key].clone() if isinstance(d[key], torch.Tensor) else np.array(d[key])
            s = x.shape[-1] // p
            if x.shape[-2:] != (s * p, s * p) or s * s != mask.shape[0]:
                raise ValueError(f"{key!r} of shape {tuple(x.shape)} is not the (C, S*p, S*p) grid of "
                                 f"L={mask.shape[0]} tokens with p={p}.")
            view = x.reshape(*x.shape[:-2], s, p, s, p)
            view[..., rows[padded], :, cols[padded], :] = self.value
            d[key] = x
        return d
