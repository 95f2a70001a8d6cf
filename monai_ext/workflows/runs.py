"""Training runs with an identity: a run id and a hash of what defines the run, random-state capture for an
exact resume, and archiving of a previous run's files before a new run writes.

The configuration hash is computed from the objects a bundle config builds (not from the config text), so
any override that changes them changes the hash, and settings that do not change the training do not:

- network: its module tree (``repr``), parameter/buffer names and shapes, and the settings stored on each
  submodule (not ``training`` and not the device);
- optimizer: class and hyperparameters of each parameter group (not ``foreach`` / ``fused`` / ... flags);
- LR scheduler: class and its initial state (``T_max``, ``base_lrs``, ...);
- data: the training datalist (paths relative to their common folder, so a moved dataset is the same data),
  every transform with its settings, batch size and sampler (not ``num_workers``, not cache settings);
- whatever the config adds under ``run_definition`` (the bundles: the seed and the loss function).

Paths of checkpoints and logs, ``resume``, ``num_workers``, ``device`` and ``amp`` are not part of it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: attributes that depend on the machine or on run-time settings, not on what is trained
VOLATILE_ATTRS = frozenset({"training", "device", "num_workers", "rank", "R", "generator", "data_source",
                            "dataset", "progress", "cache_rate", "copy_cache", "runtime_cache", "hash_func",
                            "pin_memory", "persistent_workers", "prefetch_factor", "timeout"})
#: optimizer parameter-group entries that select an implementation, not the update rule
OPTIMIZER_IMPL_KEYS = frozenset({"params", "foreach", "fused", "capturable", "differentiable"})
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DEPTH = 8


class ResumeError(RuntimeError):
    """``--resume`` cannot continue: the checkpoint belongs to another run, has no run identity, or the run
    is already finished. The message names the runs and how to proceed."""


def _qualname(obj: Any) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _array(a: np.ndarray | torch.Tensor) -> Any:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.size <= 64:
        return {"dtype": str(a.dtype), "values": a.tolist()}
    return {"dtype": str(a.dtype), "shape": list(a.shape),
            "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}


def _public_attrs(obj: Any, depth: int, seen: set[int], primitive_only: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sorted(vars(obj).items()):
        if k.startswith("_") or k in VOLATILE_ATTRS:
            continue
        if primitive_only and not isinstance(v, (type(None), bool, int, float, str, tuple, list, enum.Enum)):
            continue
        out[k] = describe(v, depth + 1, seen)
    return out


def _normalize_paths(data: Sequence[Any]) -> Any:
    """The datalist with absolute paths made relative to their common folder (relative paths are kept)."""
    paths = {v for item in data if isinstance(item, Mapping) for v in item.values()
             if isinstance(v, str) and os.path.isabs(v)}
    if not paths:
        return describe(list(data))
    try:
        common = os.path.commonpath(sorted(paths))
    except ValueError:  # mixed drives
        return describe(list(data))
    if len(paths) == 1:
        common = os.path.dirname(common)

    def rel(v: Any) -> Any:
        return os.path.relpath(v, common) if isinstance(v, str) and v in paths else v

    return [describe({k: rel(v) for k, v in item.items()}) if isinstance(item, Mapping) else describe(item)
            for item in data]


def describe(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A JSON-able description of ``obj`` for the configuration hash (see the module docstring)."""
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader, Dataset

    seen = set() if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return describe(obj.item(), depth, seen)
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__name__}.{obj.name}"
    if isinstance(obj, (Path, torch.dtype, np.dtype, type)):
        return str(obj) if not isinstance(obj, type) else _qualname(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _array(obj)
    if depth > _MAX_DEPTH:
        return _qualname(obj)
    if isinstance(obj, Mapping):
        return {str(k): describe(v, depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [describe(v, depth + 1, seen) for v in items]
    if id(obj) in seen:
        return {"ref": _qualname(obj)}
    seen.add(id(obj))
    if isinstance(obj, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
        obj = obj.module
    if isinstance(obj, torch.nn.Module):
        return {"type": _qualname(obj), "repr": _ADDRESS.sub("", repr(obj)),
                "state": [[k, list(v.shape), str(v.dtype)] for k, v in obj.state_dict().items()],
                "settings": {name or ".": _public_attrs(m, depth, seen, primitive_only=True)
                             for name, m in obj.named_modules()}}
    if isinstance(obj, Optimizer):
        return {"type": _qualname(obj),
                "groups": [{**{k: describe(v, depth + 1, seen) for k, v in sorted(g.items())
                               if k not in OPTIMIZER_IMPL_KEYS}, "n_params": len(g["params"])}
                           for g in obj.param_groups]}
    if hasattr(obj, "optimizer") and hasattr(obj, "state_dict") and hasattr(obj, "last_epoch"):  # LR scheduler
        return {"type": _qualname(obj), "state": describe(obj.state_dict(), depth + 1, seen)}
    if isinstance(obj, DataLoader):
        return {"type": "DataLoader", "batch_size": obj.batch_size, "drop_last": obj.drop_last,
                "sampler": describe(obj.sampler, depth + 1, seen), "dataset": describe(obj.dataset, depth + 1, seen)}
    if isinstance(obj, Dataset) and hasattr(obj, "data"):
        return {"data": _normalize_paths(obj.data) if isinstance(obj.data, Sequence) else describe(obj.data),
                "transform": describe(getattr(obj, "transform", None), depth + 1, seen)}
    if isinstance(obj, functools.partial):
        return {"partial": describe(obj.func, depth + 1, seen), "args": describe(obj.args, depth + 1, seen),
                "keywords": describe(obj.keywords, depth + 1, seen)}
    if hasattr(obj, "__dict__") and not hasattr(obj, "__code__"):
        return {"type": _qualname(obj), **_public_attrs(obj, depth, seen)}
    if hasattr(obj, "__qualname__"):  # function, builtin
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return _ADDRESS.sub("", repr(obj))


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_hash(parts: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``(hash of everything, {part: hash of that part})`` for the objects that define a run."""
    part_hashes = {k: _sha(describe(v))[:12] for k, v in sorted(parts.items())}
    return _sha(part_hashes)[:12], part_hashes


def new_run_id(cfg_hash: str) -> str:
    """``YYYYmmdd-HHMMSS-<hash[:6]>`` (UTC), e.g. ``20261202-071530-3fa2c1``."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{cfg_hash[:6]}"


class RunInfo:
    """The run identity stored in every checkpoint (``state_dict`` only; it is checked, not loaded)."""

    def __init__(self, run_id: str, cfg_hash: str, parts: Mapping[str, str], max_epochs: int | None) -> None:
        self.run_id, self.cfg_hash, self.parts, self.max_epochs = run_id, cfg_hash, dict(parts), max_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config_hash": self.cfg_hash, "parts": dict(self.parts),
                "max_epochs": self.max_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = str(state["run_id"])


def _randomizables(root: Any) -> list[Any]:
    """Objects with their own ``np.random.RandomState`` ``R`` (MONAI ``Randomizable``) reachable from
    ``root`` through public attributes and lists, in a fixed order, each ``R`` once."""
    found, seen_r, seen = [], set(), set()

    def walk(obj: Any, depth: int) -> None:
        if depth > _MAX_DEPTH or id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor,
                                                                        np.ndarray, torch.nn.Module)):
            return
        seen.add(id(obj))
        if isinstance(obj, Mapping):
            for v in obj.values():
                walk(v, depth + 1)
            return
        if isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)
            return
        r = getattr(obj, "R", None)
        if isinstance(r, np.random.RandomState) and id(r) not in seen_r:
            seen_r.add(id(r))
            found.append(obj)
        if hasattr(obj, "__dict__"):
            for k, v in sorted(vars(obj).items()):
                if not k.startswith("__") and k not in ("R", "data", "data_source"):
                    walk(v, depth + 1)

    walk(root, 0)
    return found


def _np_state_to_torch(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _np_state_from_torch(s: Mapping[str, Any]) -> tuple:
    return (s["name"], s["keys"].cpu().numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"])


class RandomState:
    """The random state a training continues from: torch (CPU and CUDA), numpy, Python ``random`` and the
    ``R`` of every random transform of ``data`` (a DataLoader or dataset), as tensors and plain values so
    that the checkpoint loads with ``weights_only=True``.

    With ``num_workers > 0`` the workers are reseeded from torch's generator each epoch; with
    ``num_workers=0`` the transforms' own generators carry over epochs, hence both are kept. Under DDP the
    rank-0 state is saved and restored on every rank (the ranks' states are equal when they all call
    ``set_determinism`` with the same seed).
    """

    def __init__(self, data: Any = None) -> None:
        self.data = data

    def _transforms(self) -> list[Any]:
        root = getattr(self.data, "dataset", self.data)
        return _randomizables(getattr(root, "transform", root)) if root is not None else []

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        state = {"torch": torch.get_rng_state(), "numpy": _np_state_to_torch(np.random.get_state()),
                 "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                            "gauss": gauss},
                 "transforms": [_np_state_to_torch(t.R.get_state()) for t in self._transforms()]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"].cpu())
        np.random.set_state(_np_state_from_torch(state["numpy"]))
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        transforms = self._transforms()
        if len(transforms) != len(state["transforms"]):
            logger.warning("random transforms: %d in the checkpoint, %d now; their random state is not restored",
                           len(state["transforms"]), len(transforms))
            return
        for t, s in zip(transforms, state["transforms"]):
            t.R.set_state(_np_state_from_torch(s))


class ValidationState:
    """The validation state a training continues from: the evaluator's best metric and its epoch, and the
    key-metric list of every MONAI ``CheckpointSaver`` on it (so ``model.pt`` is replaced only by a better
    model after a resume, as without the interruption)."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator

    def _savers(self) -> list[Any]:
        from monai.handlers import CheckpointSaver

        out = []
        for handlers in getattr(self.evaluator, "_event_handlers", {}).values():
            for h, *_ in handlers:
                owner = getattr(h, "__self__", None)
                if isinstance(owner, CheckpointSaver) and owner not in out and \
                        getattr(owner, "_key_metric_checkpoint", None) is not None:
                    out.append(owner)
        return out

    def state_dict(self) -> dict[str, Any]:
        st = self.evaluator.state
        savers = []
        for s in self._savers():
            sd = s._key_metric_checkpoint.state_dict()
            savers.append({k: [(float(p), str(f)) for p, f in v] for k, v in sd.items()})
        return {"best_metric": float(getattr(st, "best_metric", -1)),
                "best_metric_epoch": int(getattr(st, "best_metric_epoch", -1)), "savers": savers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        st = self.evaluator.state
        st.best_metric, st.best_metric_epoch = state["best_metric"], state["best_metric_epoch"]
        savers = self._savers()
        if len(savers) == len(state["savers"]):  # under DDP only rank 0 has the savers
            for s, sd in zip(savers, state["savers"]):
                s._key_metric_checkpoint.load_state_dict({k: [tuple(x) for x in v] for k, v in sd.items()})


def archive_previous_run(ckpt_dir: Path, patterns: Sequence[str], run_id: str | None) -> Path | None:
    """Move the files of the run that wrote ``ckpt_dir`` (those matching ``patterns``) into
    ``ckpt_dir/previous/<run_id>/``, never overwriting: a taken name gets a ``-2``, ``-3``, ... suffix.
    Returns the folder, or None when there was nothing to move."""
    files = sorted({p for pat in patterns for p in ckpt_dir.glob(pat) if p.is_file()})
    if not files:
        return None
    if run_id is None:
        newest = max(p.stat().st_mtime for p in files)
        run_id = "unidentified-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(newest))
    base = ckpt_dir / "previous" / re.sub(r"[^\w.=-]", "_", run_id)
    dest, n = base, 1
    while dest.exists():
        n += 1
        dest = base.with_name(f"{base.name}-{n}")
    dest.mkdir(parents=True)
    for p in files:
        shutil.move(str(p), str(dest / p.name))
    return dest
