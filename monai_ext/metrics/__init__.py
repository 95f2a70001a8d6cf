"""Metrics of monai_ext that MONAI does not have (the segmentation metrics themselves are MONAI's)."""

from .apf import upper_bound_dice
from .multiclass import multiclass_metrics, saliency_map

__all__ = ["upper_bound_dice", "multiclass_metrics", "saliency_map"]
