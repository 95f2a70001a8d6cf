"""Exact comparison of two training checkpoints (resumed vs uninterrupted run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def assert_same_state(a: Any, b: Any, where: str = "checkpoint") -> None:
    """``a`` and ``b`` are equal exactly: tensors bit for bit, containers key by key, everything else ``==``."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b), f"{where}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        )
        assert torch.equal(a, b), f"{where}: values differ (max |diff| {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run_state(resumed: Any, uninterrupted: Any) -> None:
    """Two ``ResumableCheckpoint`` files equal in everything but the run identity; the optimizer must have
    per-parameter state (momentum / Adam moments) for the comparison to say something about it."""
    r, u = load(resumed), load(uninterrupted)
    assert r["optimizer"]["state"], "optimizer without per-parameter state: nothing to compare"
    r.pop("run"), u.pop("run")
    assert_same_state(r, u)
