"""Paper protocols: the overlay/data agreement check the bundles' ``configs/paper.yaml`` call before training,
the variant registry (override sets per bundle) and ``monai-ext paper-table`` (train + evaluate every variant,
one Table-2-style comparison through :func:`monai_ext.reports.compare.compare_table`)."""

from __future__ import annotations

from .checks import check_prepared
from .variants import VARIANTS, bundle_variants

__all__ = ["VARIANTS", "bundle_variants", "check_prepared"]
