"""Provenance of an evaluation: code (git commit, dirty flag), package versions, SHA-256 of the resolved
config, checkpoint and datalist, seeds, device and timing. Written to ``provenance.json``, apart from
``metrics.json``, so the metrics file stays byte-identical between runs. The environment facts (git, versions,
device) come from :mod:`monai_ext.utils.env`, shared with the benchmark reports, and are re-exported here."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_ext.utils.env import PACKAGES, device_info, git_info, package_versions

logger = logging.getLogger(__name__)

__all__ = ["PACKAGES", "canonical_json", "command_line", "data_origin_of", "device_info", "display_path", "file_record",
           "find_bundle_config", "git_info", "package_versions", "resolve_config", "sha256_file", "sha256_json"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON (non-JSON values as ``str``): the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def display_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``base`` (default: the working directory, the bundle folder of a bundle run) when
    it lies below it, else absolute."""
    p = Path(path).expanduser().absolute()
    b = Path(base if base is not None else os.getcwd()).absolute()
    try:
        return p.relative_to(b).as_posix()
    except ValueError:
        return str(p)


def file_record(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{"path", "sha256", "bytes"}`` of an existing file, ``{"path", "missing": True}`` otherwise; the path
    relative to the working directory when below it (:func:`display_path`)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        return {"path": display_path(p), "missing": True}
    return {"path": display_path(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


def data_origin_of(prov: Mapping[str, Any]) -> dict[str, Any]:
    """Origin of the evaluated data: ``prov["data_origin"]`` if given, else the ``data_origin`` that
    ``monai-ext prepare`` recorded in the datalist named by ``prov["files"]["datalist"]``; ``synthetic`` is
    ``None`` (unknown) when neither says."""
    if isinstance(prov.get("data_origin"), Mapping):
        return dict(prov["data_origin"])
    rec = (prov.get("files") or {}).get("datalist") or {}
    if not rec.get("path") or rec.get("missing"):
        return {"synthetic": None, "note": "no datalist recorded"}
    path = Path(rec["path"])
    if not path.is_absolute() and prov.get("cwd"):
        path = Path(prov["cwd"]) / path
    try:
        origin = json.loads(path.read_text()).get("data_origin")
    except (OSError, ValueError, AttributeError):
        origin = None
    if not isinstance(origin, Mapping):
        return {"synthetic": None, "note": f"{rec['path']} does not record it (prepared by an older monai_ext?)"}
    return dict(origin)


def _relative_arg(arg: str, base: Path) -> str:
    """A command-line argument with absolute paths below ``base`` made relative; a list literal of paths
    (``"['a.yaml','b.yaml']"``) is rewritten as a JSON list, which MONAI's command line reads the same."""
    import ast

    text = arg.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return arg
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return json.dumps([_relative_arg(i, base) for i in items], separators=(",", ":"))
        return arg
    if os.path.isabs(text) and Path(text).exists():
        return display_path(text, base)
    return arg


def find_bundle_config() -> tuple[dict[str, Any] | None, str]:
    """The merged config of the bundle being run by ``python -m monai.bundle run`` (all config files and
    command-line overrides applied, expressions unevaluated: what MONAI's ``save_execute_config``
    exports), found as the ``ConfigParser`` on the call stack. ``(None, reason)`` when not inside a
    bundle run."""
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    try:
        while frame is not None:
            obj = frame.f_locals.get("self")
            try:
                parser = obj if isinstance(obj, ConfigParser) else getattr(obj, "parser", None)
            except Exception:  # noqa: BLE001 - any failing property: not a bundle workflow
                parser = None
            if isinstance(parser, ConfigParser):
                return parser.get(), "the running bundle's ConfigParser (config files + overrides)"
            frame = frame.f_back
    finally:
        del frame
    return None, "not found: not running inside `python -m monai.bundle run`"


def resolve_config(config: Any) -> tuple[dict[str, Any] | None, str]:
    """``config`` as a dict with a description of its source.

    ``None`` -> :func:`find_bundle_config`; a dict -> itself; a ``ConfigParser`` -> its content; a path or
    a list of paths -> the files merged in order as MONAI does.
    """
    from monai.bundle import ConfigParser

    if config is None:
        return find_bundle_config()
    if isinstance(config, ConfigParser):
        return config.get(), "ConfigParser given"
    if isinstance(config, Mapping):
        return dict(config), "dict given"
    files = [config] if isinstance(config, (str, os.PathLike)) else list(config)
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"config file(s) not found: {missing}")
    return ConfigParser.load_config_files([str(f) for f in files]), f"files {[str(f) for f in files]}"


def command_line(base: str | os.PathLike | None = None) -> list[str]:
    """``sys.argv`` with ``python -m monai.bundle`` spelt as such and absolute paths below ``base`` (default:
    the working directory, i.e. the bundle folder) relative to it, so that ``shlex.join`` of it can be pasted
    into a shell in that folder."""
    argv = list(sys.argv)
    if argv and argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        argv = ["python", "-m", "monai.bundle", *argv[1:]]
    root = Path(base if base is not None else os.getcwd())
    return [argv[0], *(_relative_arg(a, root) for a in argv[1:])] if argv else argv
