"""``monai-ext convert-checkpoint``: the explicit, documented opt-in for old pickled checkpoints.

Kept apart from :mod:`monai_ext.utils.checkpoint` so that building the ``monai-ext`` parser does not import torch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _cmd_convert(args: argparse.Namespace) -> int:
    from monai_ext.utils.checkpoint import CheckpointError, convert_checkpoint

    if not args.trust_pickle:
        logger.error("%s: not converted. Converting unpickles the file, which runs any code it holds; pass "
                     "--trust-pickle only if you trust where the file comes from", args.src)
        return 2
    try:
        convert_checkpoint(args.src, args.dst, trust_pickle=True)
    except (CheckpointError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-checkpoint",
        help="rewrite an old pickled checkpoint as a weights-only file (needs --trust-pickle)",
        description="monai_ext loads checkpoints with torch.load(weights_only=True) only. A file that holds other "
                    "pickled Python objects is refused, because unpickling can run code. For a checkpoint you "
                    "trust, this command unpickles it once and writes DST with its tensors and plain values "
                    "(modules -> state dicts; anything else is dropped and listed). See docs/security.md.")
    p.add_argument("src", type=Path, help="the pickled checkpoint (trusted source only)")
    p.add_argument("dst", type=Path, help="the weights-only checkpoint to write (must not exist)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="confirm that SRC comes from a trusted source (unpickling it may run code)")
    p.set_defaults(func=_cmd_convert)
