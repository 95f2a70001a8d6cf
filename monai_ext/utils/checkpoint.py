"""The one checkpoint loader of the package: ``torch.load(..., weights_only=True)``, never unpickling.

A checkpoint is untrusted input (see ``docs/security.md``): a pickle can run code while it loads. Every
checkpoint read in ``monai_ext`` (evaluation reports, ``monai-ext verify`` / ``package`` / ``label-app``,
:func:`transfer_weights`) goes through :func:`load_checkpoint`, which only accepts tensors and plain
containers. A file that holds other Python objects is refused with a message naming it; an old file the
user trusts is rewritten once as a weights-only file by the explicit opt-in
``monai-ext convert-checkpoint --trust-pickle IN OUT`` (:func:`convert_checkpoint`).

Layouts understood by :func:`state_dict_of`: a plain state dict, one nested under ``model`` / ``network`` /
``state_dict`` / ``net`` (MONAI ``CheckpointSaver`` / ignite ``Checkpoint`` with several objects), with
``module.`` (DDP / DataParallel) or ``_orig_mod.`` (``torch.compile``) prefixes removed.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from monai.networks.utils import copy_model_state
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CKPT_KEYS",
    "CheckpointError",
    "CheckpointMismatchError",
    "SafeCheckpointLoader",
    "StateDiff",
    "TransferReport",
    "UnsafeCheckpointError",
    "compare_state_dict",
    "convert_checkpoint",
    "load_checkpoint",
    "load_state_dict",
    "state_dict_of",
    "transfer_weights",
    "unwrap",
]

#: keys under which MONAI / ignite checkpoints nest the network weights, in the order they are tried
CKPT_KEYS: tuple[str, ...] = ("model", "network", "state_dict", "net")
#: parameter-name prefixes added by DDP / DataParallel and by ``torch.compile``
PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
CONVERT_HINT = "monai-ext convert-checkpoint --trust-pickle {path} OUT.pt"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint holds pickled Python objects, which are never loaded (they could run code)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint cannot be loaded into the network (keys or shapes differ)."""


def _torch_reason(e: BaseException) -> str:
    """The informative line of torch's ``weights_only`` error (its advice to set ``weights_only=False``
    is left out on purpose)."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it refers to the Python object {m.group(1)}"
    for pattern in (r"WeightsUnpickler error:\s*([^\n]+)", r"(Unsupported [^\n]*)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds Python objects other than tensors and plain containers
            (never unpickled; the message gives the explicit conversion command for a trusted file).
        CheckpointError: not a readable PyTorch checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _torch_reason(e)
        if reason.startswith("it refers to"):
            raise UnsafeCheckpointError(
                f"{p}: holds pickled Python objects that are not loaded, because unpickling a file can run "
                f"code ({reason}). If you trust where this file comes from, convert it once with "
                f"`{CONVERT_HINT.format(path=p)}` and use OUT.pt") from None
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (UnpicklingError: {reason})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _strip(name: str, prefixes: Sequence[str]) -> str:
    changed = True
    while changed:
        changed = False
        for pre in prefixes:
            if name.startswith(pre):
                name, changed = name[len(pre):], True
    return name


def state_dict_of(obj: Any, path: str | os.PathLike = "<checkpoint>", keys: Sequence[str] = CKPT_KEYS,
                  strip_prefixes: bool = True) -> dict[str, torch.Tensor]:
    """The network weights in a loaded checkpoint ``obj``: ``obj`` itself when it is a state dict, else the
    first mapping under one of ``keys``; ``module.`` / ``_orig_mod.`` prefixes removed if ``strip_prefixes``.

    Raises :class:`CheckpointError` naming ``path`` when no mapping of tensors is found.
    """
    state = obj
    if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        for key in keys:
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        found = f"top-level keys {list(obj)[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path}: no state dict of tensors found ({found}; looked under {list(keys)})")
    if not strip_prefixes:
        return dict(state)
    return {_strip(str(k), PREFIXES): v for k, v in state.items()}


def load_state_dict(path: str | os.PathLike, keys: Sequence[str] = CKPT_KEYS,
                    strip_prefixes: bool = True) -> dict[str, torch.Tensor]:
    """:func:`load_checkpoint` then :func:`state_dict_of`."""
    return state_dict_of(load_checkpoint(path), path, keys, strip_prefixes)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside (nested) ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


@dataclass
class StateDiff:
    """How a state dict differs from a network's: names only in the network, only in the checkpoint, and
    ``"name: checkpoint (shape) vs network (shape)"`` for shared names of another shape."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)


def compare_state_dict(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> StateDiff:
    """Compare the names and shapes of ``state`` (a checkpoint) with ``expected`` (``net.state_dict()``)."""
    return StateDiff(
        missing=[k for k in expected if k not in state],
        unexpected=[k for k in state if k not in expected],
        shapes=[f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}" for k, v in expected.items()
                if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)],
    )


# ------------------------------------------------------------------------------------ MONAI CheckpointLoader
class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments and behaviour) reading the file with :func:`load_checkpoint`,
    i.e. ``torch.load(weights_only=True)``, on every MONAI version: MONAI 1.5's own loader (MONAI Label's
    environment) calls ``torch.load(weights_only=False)``. A pickled object is refused with the file named.

    ``strict_shape=False`` copies each network's tensors of the same name and shape from its own entry of the
    checkpoint (MONAI 1.5 / 1.6 look for them in the whole checkpoint dict and so copy nothing from a nested
    or single-object checkpoint, silently); a checkpoint with no such tensor is refused."""

    def __call__(self, engine: Any) -> None:
        from ignite.handlers import Checkpoint

        checkpoint = load_checkpoint(self.load_path, map_location=self.map_location)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and first not in checkpoint:  # a single object saved as its state dict
            checkpoint = {first: checkpoint}
        if not self.strict_shape:
            for name, obj in list(self.load_dict.items()):
                if isinstance(obj, nn.Module):
                    src = checkpoint[name] if isinstance(checkpoint.get(name), Mapping) else checkpoint
                    checkpoint[name], updated, _ = copy_model_state(obj, src, inplace=False)
                    if not updated:
                        raise CheckpointMismatchError(f"{self.load_path}: no tensor matches {name!r} by name and "
                                                      f"shape (strict_shape=False)")
                else:
                    logger.warning("strict_shape is False: loading the model only, not %r", name)
                    self.load_dict.pop(name)
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(f"{self.load_path}: epoch count ({engine.state.epoch}) in the checkpoint is larger than "
                             f"the engine's max_epochs ({prior_max_epochs})")
        engine.state.max_epochs = prior_max_epochs
        self.logger.info("Restored all variables from %s", self.load_path)


# ------------------------------------------------------------------------------------------ weight transfer
@dataclass
class TransferReport:
    """What :func:`transfer_weights` did, by parameter name."""

    copied: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: kept at init
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: kept at init

    def summary(self) -> str:
        return (f"copied {len(self.copied)} tensors, initialized {len(self.new)} new "
                f"({', '.join(sorted({n.rsplit('.', 1)[-1] for n in self.new})) or 'none'}), "
                f"{len(self.unused)} unused, {len(self.mismatched)} shape-mismatched")


def transfer_weights(model: nn.Module, checkpoint: Mapping[str, torch.Tensor] | str | os.PathLike,
                     strict_shapes: bool = True) -> TransferReport:
    """Load a trained network's weights into ``model`` wherever names and shapes agree.

    The softmax-free paper's fine-tuning (Sec. 3.4): a checkpoint of a softmax ViT loaded into a
    softmax-free ViT copies every shared weight (embedding, qkv/out projections, MLPs, norms, head)
    and leaves the sequence-normalization ``gamma``/``beta`` at their initialization (1 / 0).
    The copy is MONAI's ``copy_model_state`` (same name and shape); this function adds the weights-only
    reading, the shape check and the :class:`TransferReport`. A ``DataParallel`` / DDP ``model`` is unwrapped.

    Args:
        model: target network.
        checkpoint: a state dict, a path to one (read by :func:`load_checkpoint`, weights only), or a
            MONAI/ignite checkpoint dict holding it under ``"model"``/``"network"``/``"state_dict"``/``"net"``.
        strict_shapes: raise :class:`CheckpointMismatchError` if a shared name has a different shape
            (else skip it and report).
    """
    where = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>"
    obj = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    src = state_dict_of(obj, where)
    net = unwrap(model)
    target = net.state_dict()
    mismatched = [name for name, tensor in target.items() if name in src and src[name].shape != tensor.shape]
    if mismatched and strict_shapes:
        name = mismatched[0]
        raise CheckpointMismatchError(
            f"{where}: checkpoint tensor {name!r} has shape {tuple(src[name].shape)}, the network "
            f"expects {tuple(target[name].shape)}")
    _, updated, _ = copy_model_state(net, src, inplace=True)
    copied = set(updated)
    report = TransferReport(copied=[name for name in target if name in copied],
                            new=[name for name in target if name not in src],
                            unused=sorted(set(src) - set(target)), mismatched=mismatched)
    logger.info("transfer_weights: %s", report.summary())
    return report


# ------------------------------------------------------------------------------ explicit pickle conversion
_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_DROP = object()  # marks a value that cannot be stored weights-only


def _weights_only(obj: Any, where: str, dropped: list[str]) -> Any:
    """``obj`` with everything ``weights_only=True`` cannot load converted (modules -> state dicts, numpy
    -> tensors / numbers) or dropped (listed in ``dropped``)."""
    import numpy as np

    if torch.is_tensor(obj):
        return obj.as_subclass(torch.Tensor) if type(obj) is not torch.Tensor else obj  # MetaTensor -> Tensor
    if isinstance(obj, nn.Module):
        return _weights_only(obj.state_dict(), where, dropped)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                dropped.append(f"{where}[{k!r}] (key of type {type(k).__name__})")
                continue
            conv = _weights_only(v, f"{where}[{k!r}]", dropped)
            if conv is not _DROP:
                out[k] = conv
        return out
    if isinstance(obj, (list, tuple)):
        items = [_weights_only(v, f"{where}[{i}]", dropped) for i, v in enumerate(obj)]
        items = [v for v in items if v is not _DROP]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, _PLAIN):
        return obj
    dropped.append(f"{where} ({type(obj).__module__}.{type(obj).__qualname__})")
    return _DROP



def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, trust_pickle: bool = False) -> list[str]:
    """Rewrite a checkpoint that needs unpickling as a weights-only file (the only place in the package
    that unpickles, and only with ``trust_pickle=True``: a pickle can run arbitrary code while it loads).

    Modules become their state dicts, numpy arrays tensors; other objects are dropped and returned (and
    logged) as ``"path[key] (type)"``. ``dst`` must not exist; it is checked to load with
    :func:`load_checkpoint`. Returns the dropped entries.
    """
    src, dst = Path(src), Path(dst)
    if not trust_pickle:
        raise UnsafeCheckpointError(f"{src}: converting unpickles the file, which can run code from it; pass "
                                    f"trust_pickle=True (--trust-pickle) only for a file from a trusted source")
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {src} not found")
    if dst.exists() or dst.is_symlink():
        raise CheckpointError(f"{dst}: already exists; choose a new output file")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=False)  # explicit, user-trusted opt-in
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{src}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    dropped: list[str] = []
    clean = _weights_only(obj, "checkpoint", dropped)
    if clean is _DROP:
        raise CheckpointError(f"{src}: holds a {type(obj).__name__}, nothing that can be stored weights-only")
    for item in dropped:
        logger.warning("%s: dropped %s (not weights-only data)", src, item)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        torch.save(clean, tmp)
        load_checkpoint(tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("%s -> %s: weights-only checkpoint written (%d object(s) dropped)", src, dst, len(dropped))
    return dropped

