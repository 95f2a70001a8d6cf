"""``check_checkpoint``: fail before an evaluation, with the file and the differing keys / shapes named, when a
checkpoint does not fit the network (the evaluate configs call it in ``initialize``, before MONAI's loader runs).

Built on :mod:`monai_ext.utils.checkpoint` (weights-only loading, :func:`~monai_ext.utils.checkpoint.
compare_state_dict`); it belongs there and moves once that module is free to edit (see the architecture notes).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from monai_ext.utils.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    compare_state_dict,
    load_checkpoint,
    state_dict_of,
    unwrap,
)

__all__ = ["CheckpointMismatchError", "check_checkpoint"]


def check_checkpoint(path: str | os.PathLike, network: torch.nn.Module, key: str | None = "model",
                     max_listed: int = 5) -> None:
    """Raise a clear error unless the checkpoint at ``path`` loads into ``network`` with ``strict=True``.

    The checkpoint is either the network's state dict (MONAI ``CheckpointSaver`` with one object) or a dict
    holding it under ``key`` (several objects, e.g. ``{"network": ..., "optimizer": ...}``). DDP / DataParallel
    wrappers of ``network`` are unwrapped.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointMismatchError: unreadable, not weights-only, or keys / shapes differ (up to ``max_listed`` of
            each named).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found: train the bundle first or point ckpt_dir / "
                                f"ckpt_path at the trained model")
    try:
        # weights_only=True, never a fallback: a checkpoint is untrusted input (docs/security.md)
        state = state_dict_of(load_checkpoint(p), p, keys=(key,) if key else (),
                              strip_prefixes=False)  # MONAI's CheckpointLoader does not strip prefixes either
    except CheckpointMismatchError:
        raise
    except CheckpointError as e:
        raise CheckpointMismatchError(str(e)) from None
    net = unwrap(network)
    diff = compare_state_dict(state, net.state_dict())
    if diff.ok:
        return
    parts = []
    for what, items in (("missing key(s)", diff.missing), ("unexpected key(s)", diff.unexpected),
                        ("shape mismatch(es)", diff.shapes)):
        if items:
            more = f", ... ({len(items) - max_listed} more)" if len(items) > max_listed else ""
            parts.append(f"{len(items)} {what}: " + "; ".join(items[:max_listed]) + more)
    raise CheckpointMismatchError(
        f"checkpoint {p} does not match the network {type(net).__name__}: " + " | ".join(parts)
        + ". Was it trained with the same configuration (image_size, preset, network_def#attention, ...)?")
