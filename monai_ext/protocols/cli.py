"""``monai-ext paper-table BUNDLE [--variants ...] [--overlay cpu|paper] [--epochs N] [--out DIR]``.

Example (VinDr-CXR on data prepared in the bundle's data/prepared, e.g. by ``monai-ext demo``)::

    monai-ext paper-table bundles/vindr_cxr_cardiomegaly_classification --variants softmax sima softmax_free
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _bundle_path(value: str) -> Path:
    p = Path(value)
    if not p.is_dir() and (Path("bundles") / value).is_dir():
        return Path("bundles") / value
    return p


def _run(args: argparse.Namespace) -> int:
    from .paper_table import run_paper_table

    path = run_paper_table(args.bundle, variants=args.variants, overlay=args.overlay, epochs=args.epochs,
                           out=args.out, seed=args.seed, overrides=json.loads(args.overrides or "{}"))
    print(path.read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paper-table", help="train + evaluate every variant of a bundle, one comparison table")
    p.add_argument("bundle", type=_bundle_path, help="bundle folder or name under ./bundles")
    p.add_argument("--variants", nargs="+", default=None,
                   help="e.g. softmax sima softmax_free (SFN bundles), apf uniform (APF bundles)")
    p.add_argument("--overlay", default="cpu", help="cpu (small, synthetic-data sized) or paper (configs/paper.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="override the overlay's epochs")
    p.add_argument("--seed", type=int, default=0, help="the same seed for every variant")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default <bundle>/eval/paper_table/<overlay>-<time>; must be new or empty)")
    p.add_argument("--overrides", default=None, help='extra config overrides for every variant, JSON: {"key": value}')
    p.set_defaults(func=_run)
