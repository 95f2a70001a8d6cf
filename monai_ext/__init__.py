"""monai_ext: compute-efficient transformers for large medical images, as MONAI bundles.

Subpackages (docs/architecture.md is the map, lowest layer first):
    utils       the one checkpoint loader (weights only), environment info, Z-order helpers
    networks    attention registry, ViT (2D/3D), UNETR, APF-UNETR
    transforms  APF quadtree adaptive patching / unpatching (array and dictionary transforms)
    data        dataset preparation (real layouts -> datalists); data.synthetic: generators in those layouts
    inferers    APF inference at full resolution
    metrics     APF's upper-bound Dice
    reports     reproducible evaluation reports
    workflows   handlers, run identity, checks and inference I/O for the bundle configs
    bundle      verify / package / MONAI Label app
    bench       benchmarks (not tests)
"""

__version__ = "0.1.0"
