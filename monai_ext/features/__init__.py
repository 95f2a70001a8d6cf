"""The WSI feature pipeline (``monai-ext features``): slides -> tile feature files in the CLAM layout."""

from .pipeline import FeatureSettings, extract_features, plan_tiles, shard
from .slide import SlideError, TiledSlide, find_slides, slide_mpp

__all__ = ["FeatureSettings", "SlideError", "TiledSlide", "extract_features", "find_slides", "plan_tiles", "shard",
           "slide_mpp"]
