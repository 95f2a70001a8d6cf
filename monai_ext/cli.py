"""The ``monai-ext`` command line.

Each subsystem contributes its sub-commands through a ``register(subparsers)`` function,
so that this file stays a thin dispatcher and importing one subsystem never pulls in the
others (``monai-ext bench`` does not import the dataset code and vice versa).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: modules that provide ``register(subparsers)``; each adds one or more sub-commands
#: whose parser sets ``func`` (called with the parsed namespace, returns an exit code).
COMMAND_MODULES: tuple[str, ...] = (
    "monai_ext.demo",
    "monai_ext.data.cli",
    "monai_ext.bench.cli",
    "monai_ext.reports.cli",
    "monai_ext.bundle.cli",
    "monai_ext.utils.cli",
    "monai_ext.protocols.cli",
    "monai_ext.features.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-ext",
        description="Compute-efficient transformers for large medical images (MONAI bundles).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # this subsystem is not part of the installed version
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
