"""``monai-ext features``: whole-slide images -> one tile-feature file per slide (CLAM layout).

    monai-ext features SLIDES_OR_FOLDERS... --out DIR --encoder resnet50 --weights RetCCL.pth [--magnification 20]
    torchrun --nproc_per_node=4 -m monai_ext.cli features ...     # rank r takes slides r::4
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="tile features of whole-slide images (tissue, tiling, filters, encoder)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slides", nargs="+", type=Path, help="slide files (.svs, .tif, .tiff) or folders (recursive)")
    p.add_argument("--out", type=Path, required=True, help="feature folder: h5_files/<slide>.h5 (and/or pt_files/)")
    p.add_argument("--encoder", default="resnet50", help="resnet50 (MONAI ResNet-50, torchvision / RetCCL weights) "
                                                         "or torchscript:PATH")
    p.add_argument("--weights", type=Path, default=None, help="ResNet-50 weights file (read weights-only)")
    p.add_argument("--random-init", action="store_true", help="random ResNet-50 weights (tests only)")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--magnification", type=float, default=None, help="objective magnification of the tiles "
                                                                       "(20 = 0.5 um/px; default 20)")
    res.add_argument("--mpp", type=float, default=None, help="tile resolution in microns per pixel instead")
    p.add_argument("--slide-mpp", type=float, default=None,
                   help="level-0 microns per pixel for slides whose file does not state it")
    p.add_argument("--tile", type=int, default=224, help="tile side in pixels at that resolution (default 224)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="least tissue share of a grid tile (default 0.5)")
    p.add_argument("--max-background", type=float, default=0.5, help="most white-glass share of a tile")
    p.add_argument("--blur-threshold", type=float, default=1e-3, help="least Laplacian variance of a tile")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--format", nargs="+", choices=["h5", "pt"], default=["h5"], dest="formats")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from monai_ext.networks.tile_encoder import build_tile_encoder
    from monai_ext.utils.checkpoint import CheckpointError

    from .pipeline import FeatureSettings, extract_features
    from .slide import find_slides

    magnification = args.magnification if args.magnification is not None or args.mpp is not None else 20.0
    try:
        settings = FeatureSettings(magnification=magnification if args.mpp is None else None, mpp=args.mpp,
                                   slide_mpp=args.slide_mpp, tile=args.tile, min_tissue=args.min_tissue,
                                   max_background=args.max_background, blur_threshold=args.blur_threshold,
                                   batch_size=args.batch_size, formats=tuple(args.formats))
        settings.target_mpp()
        slides = find_slides(args.slides)
        if not slides:
            raise FileNotFoundError(f"no slide files (.svs, .tif, .tiff) in {', '.join(map(str, args.slides))}")
        encoder = build_tile_encoder(args.encoder, args.weights, args.random_init)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        logger.error("features: %s", e)
        return 1
    device = torch.device(args.device) if args.device else None
    results = extract_features(slides, args.out, encoder, settings, device=device)
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        logger.error("failed: %s", r["reason"])
    return 1 if failed else 0
