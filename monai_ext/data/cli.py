"""``monai-ext synth`` and ``monai-ext prepare``: the one command-line layer of every dataset.

Each dataset (:data:`monai_ext.data.dataset.DATASETS`) declares its own options as data
(:class:`monai_ext.data.dataset.Option`); the options every dataset shares (``--out``, ``--seed``, ``--raw``,
``--overwrite``, the size limits) are added here.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monai_ext.data.common import DataError
from monai_ext.data.dataset import DATASETS, Option, get_dataset, prepare_checked, skipped_count
from monai_ext.data.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, set_limits

logger = logging.getLogger(__name__)

__all__ = ["prepare_checked", "register", "skipped_count"]

#: namespace entries that are not options of ``synthesize`` / ``prepare``
_NOT_OPTIONS = {"func", "command", "dataset", "verbose"}


def _add(parser: argparse.ArgumentParser, options: tuple[Option, ...] | list[Option]) -> None:
    for opt in options:
        parser.add_argument(*opt.flags, **opt.kwargs)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``synth DATASET`` and ``prepare DATASET`` to the ``monai-ext`` command line."""
    p = sub.add_parser("synth", help="write a synthetic dataset in the real on-disk layout")
    ssub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name in sorted(DATASETS):
        dp = ssub.add_parser(name)
        dp.add_argument("--out", type=Path, required=True)
        dp.add_argument("--cases", type=int, default=None, help="number of cases (dataset default if omitted)")
        dp.add_argument("--seed", type=int, default=0)
        _add(dp, list(DATASETS[name].synth_options))
        dp.set_defaults(func=_synth)

    p = sub.add_parser("prepare", help="read a dataset's real layout and write prepared files + datalist.json")
    psub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name in sorted(DATASETS):
        dp = psub.add_parser(name)
        dp.add_argument("--raw", type=Path, required=True, help="dataset root as downloaded")
        dp.add_argument("--out", type=Path, required=True)
        dp.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
        dp.add_argument("--seed", type=int, default=0, help="seed of the train/validation/test split")
        dp.add_argument(
            "--max-pixels",
            type=float,
            default=None,
            metavar="N",
            help="refuse (skip, naming the file) any image, volume or slide level whose header declares "
            f"more than N elements (default {DEFAULT_MAX_PIXELS:.3g}), before decoding it",
        )
        dp.add_argument(
            "--max-bytes",
            type=float,
            default=None,
            metavar="N",
            help=f"the same limit in decoded bytes (default {DEFAULT_MAX_BYTES / 2**30:g} GiB)",
        )
        _add(dp, list(DATASETS[name].prepare_options))
        dp.set_defaults(func=_prepare)


def _synth(args: argparse.Namespace) -> int:
    opts = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS | {"out", "cases", "seed"}}
    get_dataset(args.dataset).synthesize(args.out, cases=args.cases, seed=args.seed, **opts)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    set_limits(max_pixels=args.max_pixels, max_bytes=args.max_bytes)  # also for the worker processes
    opts = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS | {"raw", "out", "max_pixels", "max_bytes"}}
    try:
        prepare_checked(args.dataset, args.raw, args.out, **opts)
    except (DataError, FileNotFoundError) as e:  # bad input: one line naming the file, no traceback
        logger.debug("prepare failed", exc_info=True)
        logger.error("prepare %s failed: %s", args.dataset, e)
        return 1
    return 0
