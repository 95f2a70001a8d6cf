"""Metrics of monai_ext that MONAI does not have (the segmentation metrics themselves are MONAI's)."""

from .apf import upper_bound_dice

__all__ = ["upper_bound_dice"]
