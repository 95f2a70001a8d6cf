"""APF mask upper bound: Dice(GT, unpatch(patch(GT))) for APF vs uniform patching at the
same token count, on real images (issue 3, "Must show").

- ``cmu_small_region.svs`` (real Aperio H&E, CC0; committed at ``tests/data``): level 0 padded to a square
  with the background colour (median of the border pixels), down-scaled (area) to
  ``side x side``; tissue mask = Otsu threshold of the HSV saturation; APF edges = Canny
  100/200 after a 3 x 3 Gaussian blur.
- scikit-image's ``ihc.png`` (512 x 512, tissue edge to edge), same mask recipe.

Usage::

    .venv/bin/python scripts/apf_upper_bound.py [--svs PATH] [--side 1024] [--tokens 1024]

Prints a markdown table (``docs/apf.md`` quotes it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from monai_ext.metrics import upper_bound_dice
from monai_ext.transforms import plan_quadtree

logger = logging.getLogger("apf_upper_bound")

DEFAULT_SVS = Path(__file__).resolve().parents[1] / "tests" / "data" / "cmu_small_region.svs"  # committed copy


def read_svs_level0(path: str | Path) -> np.ndarray:
    """Level 0 of an Aperio SVS as ``(H, W, 3)`` uint8, read with ``tifffile``."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SVS file not found: {path}")
    with tifffile.TiffFile(path) as tf:
        rgb = tf.pages[0].asarray()
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"{path}: level 0 is not an RGB image (shape {rgb.shape}).")
    return np.ascontiguousarray(rgb[..., :3])


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue mask ``(H, W)`` uint8: Otsu threshold of the HSV saturation of ``(H, W, 3)``."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    sat = rgb2hsv(rgb)[..., 1]
    return (sat > threshold_otsu(sat)).astype(np.uint8)


def he_example(path: str | Path = DEFAULT_SVS, side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The issue's H&E example: ``(image (3, side, side) uint8, mask (1, side, side) uint8)``."""
    import cv2

    rgb = read_svs_level0(path)
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    square = np.empty((max(h, w), max(h, w), 3), dtype=np.uint8)
    square[:] = np.median(border, axis=0).astype(np.uint8)
    square[:h, :w] = rgb
    small = cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.moveaxis(small, -1, 0)), tissue_mask(small)[None]


def ihc_example() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``ihc.png`` (512 x 512) and its saturation-Otsu mask."""
    from skimage import data

    rgb = data.immunohistochemistry()
    return np.ascontiguousarray(np.moveaxis(rgb, -1, 0)), tissue_mask(rgb)[None]


def compare(
    image: np.ndarray, mask: np.ndarray, tokens: int, patch_size: int, min_size: int, blur_kernel: int = 3
) -> dict[str, dict[str, float]]:
    """Upper-bound Dice of APF (fixed length ``tokens``, leaves >= ``min_size``) and uniform
    patching with the same token count, both resized to ``patch_size``; labels patched with
    nearest (the training path) and with area (soft fractions), unpatched bilinear."""
    side = image.shape[-1]
    uniform_size = side // round(tokens**0.5)
    plans = {
        "apf": plan_quadtree(
            image, patch_size=patch_size, num_tokens=tokens, mode="fixed", min_size=min_size, blur_kernel=blur_kernel
        ),
        "uniform": plan_quadtree(
            image, patch_size=patch_size, num_tokens=tokens, mode="uniform", min_size=uniform_size
        ),
    }
    out: dict[str, dict[str, float]] = {}
    for name, meta in plans.items():
        out[name] = {
            "leaves": int(meta["num_leaves"]),
            "nearest": float(upper_bound_dice(mask, meta, interpolation="nearest")[0]),
            "area": float(upper_bound_dice(mask, meta, interpolation="area")[0]),
        }
    out["uniform"]["leaf_size"] = uniform_size
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--svs", default=str(DEFAULT_SVS), help="path of cmu_small_region.svs")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    image, mask = he_example(args.svs, args.side)
    rows.append(
        (f"cmu_small_region.svs @ {args.side}", compare(image, mask, args.tokens, args.patch_size, args.min_size))
    )
    image, mask = ihc_example()
    rows.append(("skimage ihc.png @ 512", compare(image, mask, args.tokens, args.patch_size, args.min_size)))
    lines = [
        ("| image | tokens | APF leaves | uniform leaf | APF Dice (nearest) | uniform Dice (nearest) "
         "| APF Dice (area) | uniform Dice (area) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {args.tokens} | {r['apf']['leaves']} | {r['uniform']['leaf_size']} -> {args.patch_size} "
            f"| {r['apf']['nearest']:.4f} | {r['uniform']['nearest']:.4f} | {r['apf']['area']:.4f} "
            f"| {r['uniform']['area']:.4f} |"
        )
    logger.info("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
