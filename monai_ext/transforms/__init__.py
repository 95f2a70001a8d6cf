"""Transforms of monai_ext: APF quadtree adaptive patching / unpatching as array transforms
(``AdaptivePatch``, ``AdaptiveUnpatch``), dictionary transforms (``AdaptivePatchd``, ``AdaptiveUnpatchd``)
and functions (:mod:`monai_ext.transforms.apf`)."""

from .apf import (
    APF_MODES,
    AdaptivePatch,
    AdaptivePatchD,
    AdaptivePatchd,
    AdaptivePatchDict,
    AdaptiveUnpatch,
    AdaptiveUnpatchD,
    AdaptiveUnpatchd,
    AdaptiveUnpatchDict,
    compute_edge_map,
    extract_patches,
    grid_to_tokens,
    morton_encode,
    plan_quadtree,
    quadtree_patch,
    quadtree_unpatch,
    to_uint8_gray,
    tokens_to_grid,
    zorder_grid,
    zorder_to_raster,
)

__all__ = [
    "APF_MODES",
    "AdaptivePatch",
    "AdaptivePatchD",
    "AdaptivePatchDict",
    "AdaptivePatchd",
    "AdaptiveUnpatch",
    "AdaptiveUnpatchD",
    "AdaptiveUnpatchDict",
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
    "zorder_grid",
    "zorder_to_raster",
]
