"""Whole-slide APF (layer 2; imports ``data``, ``transforms``, ``utils``): the streaming quadtree planner of a
slide at a target scale (:func:`plan_slide`: edge counts tile by tile, the tree from counts alone) and the leaf
extraction from the best pyramid level (:func:`extract_slide_patches`, :func:`extract_mask_patches`)."""

from .extract import extract_mask_patches, extract_slide_patches
from .planner import plan_slide, read_target_region, stream_edge_counts, target_shape

__all__ = [
    "extract_mask_patches",
    "extract_slide_patches",
    "plan_slide",
    "read_target_region",
    "stream_edge_counts",
    "target_shape",
]
