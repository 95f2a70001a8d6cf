"""Whole-slide APF (layer 2; imports ``data``, ``transforms``, ``utils``): the streaming quadtree planner of a
slide at a target scale (:func:`plan_slide`: edge counts tile by tile, the tree from counts alone), the leaf
extraction from the best pyramid level (:func:`extract_slide_patches`, :func:`extract_mask_patches`), unpatching
onto the slide as a pyramidal TIFF written tile by tile (:func:`write_prediction_pyramid`), and the dictionary
transforms bundles use (:class:`SlideAdaptivePatchd`, :class:`SlidePredictionWriterd`, :class:`MaskPaddingTokensd`)."""

from .extract import extract_mask_patches, extract_slide_patches
from .planner import plan_slide, read_target_region, slide_geometry, stream_edge_counts, target_shape
from .transforms import MaskPaddingTokensd, SlideAdaptivePatchd, SlidePredictionWriterd
from .unpatch import LeafRenderer, write_prediction_pyramid

__all__ = [
    "LeafRenderer",
    "MaskPaddingTokensd",
    "SlideAdaptivePatchd",
    "SlidePredictionWriterd",
    "extract_mask_patches",
    "extract_slide_patches",
    "plan_slide",
    "read_target_region",
    "slide_geometry",
    "stream_edge_counts",
    "target_shape",
    "write_prediction_pyramid",
]
