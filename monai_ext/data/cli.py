"""``monai-ext synth`` and ``monai-ext prepare`` sub-commands."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

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
        module.add_prepare_args(dp)
        dp.set_defaults(func=_prepare)


def _synth(args: argparse.Namespace) -> int:
    kw = {k: v for k, v in vars(args).items() if k not in {"func", "command", "dataset", "out", "cases", "verbose"}}
    if args.cases is not None:
        kw["cases"] = args.cases
    _module(args.dataset).synthesize(args.out, **kw)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    opts = {k: v for k, v in vars(args).items() if k not in {"func", "command", "dataset", "raw", "out", "overwrite", "verbose"}}
    _module(args.dataset).prepare(args.raw, args.out, overwrite=args.overwrite, **opts)
    return 0
