"""monai_ext: compute-efficient transformers for large medical images, as MONAI bundles.

Subpackages:
    networks    attention registry, ViT (2D/3D), UNETR, APF-UNETR
    transforms  APF quadtree patching / unpatching and other dictionary transforms
    data        dataset preparation (real layouts -> datalists) and synthetic generators
    reports     reproducible evaluation reports
    bench       benchmarks (not tests)
"""

__version__ = "0.1.0"
