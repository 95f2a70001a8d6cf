"""Sub-commands ``monai-ext verify | package | label-app`` (registered by :mod:`monai_ext.cli`).

Each takes bundle folders; a bare bundle name is looked up in ``--bundles-dir`` (default: ``./bundles`` of the
working directory). Errors end the output as one line naming the file and the problem; the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from monai_ext.bundle.label_app import LABEL_HOST, build_label_app, label_server_command
from monai_ext.bundle.package import package_bundle
from monai_ext.bundle.registry import BUNDLE_NAMES, BundleError
from monai_ext.bundle.verify import SCHEMA_NAME, verify_bundle

logger = logging.getLogger(__name__)

__all__ = ["register"]

def _parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as on MONAI's command line; VALUE is read as YAML (numbers, lists, dicts)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BundleError(f"--override {item!r}: expected KEY=VALUE, e.g. preset=paper or image_size=512")
        out[key] = yaml.safe_load(value)
    return out


def _parse_ckpts(items: Sequence[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise BundleError(f"--ckpt {item!r}: expected BUNDLE=PATH")
        out[name] = Path(path)
    return out


def _cmd_verify(args: argparse.Namespace) -> int:
    failed = 0
    for bundle in args.bundle:
        try:
            result = verify_bundle(bundle, ckpt=args.ckpt, overrides=_parse_overrides(args.override),
                                   schema=args.schema, onnx=not args.no_onnx, bundles_dir=args.bundles_dir)
            logger.info("verified: %s", json.dumps(result, default=str))
        except BundleError as e:
            logger.error("%s", e)
            failed += 1
    return 1 if failed else 0


def _cmd_package(args: argparse.Namespace) -> int:
    try:
        package_bundle(args.bundle, args.out, ckpt=args.ckpt, schema=args.schema, url_base=args.url_base,
                       bundles_dir=args.bundles_dir)
    except BundleError as e:
        logger.error("%s", e)
        return 1
    return 0


def _cmd_label_app(args: argparse.Namespace) -> int:
    try:
        build_label_app(args.out, bundles=args.bundle or None, ckpts=_parse_ckpts(args.ckpt),
                        bundles_dir=args.bundles_dir)
    except BundleError as e:
        logger.error("%s", e)
        return 1
    logger.info("MONAI Label app written to %s; start it with:\n  %s", args.out,
                label_server_command(args.out, host=args.host, port=args.port))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("--host %s: the server will be reachable from other machines, and MONAI Label has no "
                       "authentication by default (anyone could read the studies and replace the weights); put "
                       "MONAI Label's auth or an authenticating reverse proxy in front of it (docs/security.md)",
                       args.host)
    return 0


def _add_bundles_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundles-dir", type=Path, default=None,
                   help="folder in which a bundle NAME is looked up (default: ./bundles); a folder path is used as is")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``verify``, ``package`` and ``label-app`` to the ``monai-ext`` sub-commands."""
    p = sub.add_parser(
        "verify", help="MONAI's bundle checks (metadata, net in/out, TorchScript and ONNX parity); not a safety check",
        description="MONAI's bundle checks: metadata, network in/out, TorchScript and ONNX parity. A bundle's configs "
                    "are code: verifying one runs its `$` expressions and imports its `_target_`s, as "
                    "`python -m monai.bundle run` does. `verify` is therefore NOT a safety check for a bundle you do "
                    "not trust; read its configs first (docs/security.md). Checkpoints are read weights-only.")
    p.add_argument("bundle", nargs="+", help="bundle folder (or a name in --bundles-dir)")
    _add_bundles_dir(p)
    p.add_argument("--ckpt", type=Path, default=None,
                   help="checkpoint to check and export (default models/model.pt, else fresh weights)")
    p.add_argument("--schema", type=Path, default=None, help=f"local copy of MONAI's {SCHEMA_NAME}")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="config override as on MONAI's command line (value read as YAML), repeatable")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("package", help="a self-contained model-zoo zip: configs, the monai_ext code they need vendored "
                                       "as scripts/, weights and TorchScript export (docs/packaging.md)")
    p.add_argument("bundle", help="bundle folder (or a name in --bundles-dir)")
    _add_bundles_dir(p)
    p.add_argument("--out", type=Path, required=True, help="FILE.zip")
    p.add_argument("--ckpt", type=Path, default=None, help="weights (default <bundle>/models/model.pt)")
    p.add_argument("--schema", type=Path, default=None, help=f"local copy of MONAI's {SCHEMA_NAME}")
    p.add_argument("--url-base", default=None,
                   help="where the model files will be hosted: writes large_files.yml (url and sha256 of each); "
                        "without it that file is left out and the zip carries the files")
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser("label-app", help="assemble a MONAI Label app folder holding the bundles and their weights")
    p.add_argument("--out", type=Path, required=True, help="app folder to write")
    p.add_argument("--bundle", action="append",
                   help=f"bundle folder or name to include (repeatable; default: {', '.join(BUNDLE_NAMES)})")
    _add_bundles_dir(p)
    p.add_argument("--ckpt", action="append", metavar="BUNDLE=PATH",
                   help="weights of one bundle (default <bundle>/models/model.pt), repeatable")
    p.add_argument("--host", default=LABEL_HOST,
                   help=f"address in the printed start_server command (default {LABEL_HOST}: this machine only; "
                        "see docs/security.md before exposing it)")
    p.add_argument("--port", type=int, default=8000, help="port in the printed start_server command")
    p.set_defaults(func=_cmd_label_app)
