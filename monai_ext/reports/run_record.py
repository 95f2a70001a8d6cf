"""The ``provenance.json`` content of an evaluation run: what was run (name, task, split, variant, case counts),
on what (checkpoint, datalist and resolved config, hashed), with what (code, packages, device, world size,
seeds) and how long it took; built from :mod:`monai_ext.reports.provenance`'s public functions."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from typing import Any

from .provenance import command_line, device_info, file_record, git_info, package_versions, sha256_json

__all__ = ["evaluation_provenance"]


def evaluation_provenance(
    run: Mapping[str, Any],
    device: Any,
    world_size: int,
    seed: int,
    config: Mapping[str, Any] | None,
    config_source: str | None,
    ckpt_path: str | os.PathLike | None,
    datalist_path: str | os.PathLike | None,
    timing: Mapping[str, float],
) -> dict[str, Any]:
    """``provenance.json`` of an evaluation: ``run`` (name, task, split, variant, counts, APF settings) plus the
    environment, file hashes (:func:`~monai_ext.reports.provenance.file_record`), the resolved ``config``'s hash,
    the bootstrap ``seed`` (and the config's ``seed``), ``timing`` and the command line."""
    seeds: dict[str, Any] = {"bootstrap": int(seed)}
    if isinstance(config, Mapping) and isinstance(config.get("seed"), int):
        seeds["config"] = config["seed"]
    return {
        "run": dict(run),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "packages": package_versions(),
        "device": device_info(device),
        "world_size": int(world_size),
        "seeds": seeds,
        "files": {"checkpoint": file_record(ckpt_path), "datalist": file_record(datalist_path)},
        "config": {"sha256": sha256_json(config) if config is not None else None, "source": config_source,
                   "file": "config.json" if config is not None else None},
        "timing": dict(timing),
        "command": command_line(),
        "cwd": os.getcwd(),
    }
