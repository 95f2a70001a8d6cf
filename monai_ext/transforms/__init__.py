"""Dictionary and array transforms of monai_ext (APF quadtree adaptive patching, ...)."""

from .apf import (
    APF_MODES,
    AdaptivePatchd,
    AdaptiveUnpatchd,
    compute_edge_map,
    extract_patches,
    grid_to_tokens,
    morton_encode,
    plan_quadtree,
    quadtree_patch,
    quadtree_unpatch,
    to_uint8_gray,
    tokens_to_grid,
    upper_bound_dice,
    zorder_grid,
    zorder_to_raster,
)

__all__ = [
    "APF_MODES",
    "AdaptivePatchd",
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
    "upper_bound_dice",
    "zorder_grid",
    "zorder_to_raster",
]
