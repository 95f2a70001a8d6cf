"""Gathering per-case records across DDP ranks for a report (``torch.distributed.all_gather_object``).

MONAI's metric handlers gather their buffers (``engine.state.metric_details``) rank by rank, rank 0 first;
:func:`gather_records` concatenates the ranks' records in the same order, so row ``i`` of the details and
record ``i`` describe the same case.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["gather_records", "is_sharded", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_sharded(loader: Any) -> bool:
    """Whether ``loader`` splits its dataset across ranks (a ``DistributedSampler``)."""
    return isinstance(getattr(loader, "sampler", None), torch.utils.data.distributed.DistributedSampler)


def gather_records(records: list[dict[str, Any]], loader: Any, what: str) -> list[dict[str, Any]]:
    """Every rank's ``records`` (rank 0's first) when ``loader`` is sharded in a process group, else ``records``.

    The gathered count must equal the dataset length: a padding sampler would count cases twice, so use
    ``monai.data.DistributedSampler(even_divisible=False)``. Every rank must call this (it is collective).
    """
    _, size = world()
    if size == 1 or not is_sharded(loader):
        return records
    parts: list[Any] = [None] * size
    torch.distributed.all_gather_object(parts, records)
    merged = [r for part in parts for r in part]
    n = len(loader.dataset)
    if len(merged) != n:
        raise RuntimeError(
            f"{what}: gathered {len(merged)} per-case results from {size} ranks but the dataset has {n} cases; "
            f"the DistributedSampler pads or drops cases -- use monai.data.DistributedSampler(even_divisible=False)")
    return merged
