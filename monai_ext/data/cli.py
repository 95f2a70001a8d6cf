"""``monai-ext synth`` and ``monai-ext prepare`` sub-commands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

from monai_ext.data.common import SKIPPED_NAME, DataError, check_splits
from monai_ext.data.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, set_limits

logger = logging.getLogger(__name__)

#: dataset name -> module implementing synthesize / add_prepare_args / prepare
DATASETS = {
    "duke": "monai_ext.data.duke",
    "vindr_cxr": "monai_ext.data.vindr_cxr",
    "btcv": "monai_ext.data.btcv",
    "paip": "monai_ext.data.paip",
}


def _module(name: str):
    return importlib.import_module(DATASETS[name])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in the real on-disk layout")
    ssub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name in sorted(DATASETS):
        dp = ssub.add_parser(name)
        dp.add_argument("--out", type=Path, required=True)
        dp.add_argument("--cases", type=int, default=None, help="number of cases (dataset default if omitted)")
        dp.add_argument("--seed", type=int, default=0)
        add_synth_args = getattr(_module(name), "add_synth_args", None)  # optional: generator options
        if add_synth_args is not None:
            add_synth_args(dp)
        dp.set_defaults(func=_synth)

    p = sub.add_parser("prepare", help="read a dataset's real layout and write prepared files + datalist.json")
    psub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name in sorted(DATASETS):
        try:
            module = _module(name)
        except ModuleNotFoundError as e:  # a dataset not in this installation
            if e.name != DATASETS[name]:
                raise
            continue
        dp = psub.add_parser(name)
        dp.add_argument("--raw", type=Path, required=True, help="dataset root as downloaded")
        dp.add_argument("--out", type=Path, required=True)
        dp.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
        dp.add_argument("--seed", type=int, default=0, help="seed of the train/validation/test split")
        dp.add_argument("--max-pixels", type=float, default=None, metavar="N",
                        help="refuse (skip, naming the file) any image, volume or slide level whose header declares "
                             f"more than N elements (default {DEFAULT_MAX_PIXELS:.3g}), before decoding it")
        dp.add_argument("--max-bytes", type=float, default=None, metavar="N",
                        help=f"the same limit in decoded bytes (default {DEFAULT_MAX_BYTES / 2**30:g} GiB)")
        module.add_prepare_args(dp)
        dp.set_defaults(func=_prepare)


def _synth(args: argparse.Namespace) -> int:
    kw = {k: v for k, v in vars(args).items() if k not in {"func", "command", "dataset", "out", "cases", "verbose"}}
    if args.cases is not None:
        kw["cases"] = args.cases
    _module(args.dataset).synthesize(args.out, **kw)
    return 0


def skipped_count(out: Path) -> int:
    """Entries of ``out/skipped.json`` (0 when absent or unreadable)."""
    try:
        return len(json.loads((Path(out) / SKIPPED_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def prepare_checked(dataset: str, raw: Path, out: Path, **options) -> dict:
    """``prepare`` of ``dataset``, then the split checks of that dataset (its ``REQUIRED_SPLITS`` and, for
    classification, ``CLASSES``): raises :class:`monai_ext.data.common.PrepareError` when the result is
    unusable (the datalist is still written, for inspection)."""
    module = _module(dataset)
    datalist = module.prepare(raw, out, **options)
    check_splits(datalist, Path(out), getattr(module, "REQUIRED_SPLITS", ()), getattr(module, "CLASSES", None),
                 n_skipped=skipped_count(out))
    return datalist


def _prepare(args: argparse.Namespace) -> int:
    set_limits(max_pixels=args.max_pixels, max_bytes=args.max_bytes)  # also for the worker processes
    opts = {k: v for k, v in vars(args).items()
            if k not in {"func", "command", "dataset", "raw", "out", "overwrite", "verbose", "max_pixels", "max_bytes"}}
    try:
        prepare_checked(args.dataset, args.raw, args.out, overwrite=args.overwrite, **opts)
    except (DataError, FileNotFoundError) as e:  # bad input: one line naming the file, no traceback
        logger.debug("prepare failed", exc_info=True)
        logger.error("prepare %s failed: %s", args.dataset, e)
        return 1
    return 0
