"""Distributed data parallel set-up that picks its backend from the hardware.

``nccl`` with CUDA (one GPU per process, ``LOCAL_RANK``), ``gloo`` on CPU (no ``device_ids``, no
``cuda.set_device``). Launch with ``torchrun --nproc_per_node=N [--nnodes ... --rdzv_endpoint ...]``.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def dist_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is present, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed() -> bool:
    """Initialise the default process group from torchrun's environment (idempotent)."""
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu configs must be launched with torchrun (RANK/WORLD_SIZE not set), e.g. "
            "torchrun --nproc_per_node=2 -m monai.bundle run --config_file \"['train.yaml','multi_gpu_train.yaml']\""
        )
    backend = dist_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend)
    logger.info("process group: backend=%s rank=%d/%d", backend, dist.get_rank(), dist.get_world_size())
    return True


def shutdown_distributed() -> None:
    """Tear the default process group down on every rank together (the ``finalize`` of the multi_gpu configs).

    A barrier first, so that no rank destroys its process group and exits while a peer is still working (rank 0
    writing a report after a gather) or still tearing down: with gloo, such a rank could abort at exit
    ("terminate called without an active exception"). No-op without a process group; not reached when the
    run failed (MONAI skips ``finalize`` then), so a dead peer cannot block it.
    """
    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
        # free the process group and its finished work objects now, while the interpreter is whole: destroyed
        # during interpreter finalisation, gloo's threads can abort the process (pytorch/pytorch#179291)
        gc.collect()
        logger.info("process group destroyed")


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def ddp_wrap(network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move ``network`` to ``device`` and wrap it in ``DistributedDataParallel`` for the backend."""
    device = torch.device(device)
    network = network.to(device)
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=[device], output_device=device)
    return torch.nn.parallel.DistributedDataParallel(network)


#: handler classes that only report or save, and so run on rank 0 only. Not MONAI's MetricsSaver /
#: ClassificationSaver: they all-gather across ranks at epoch end and write on their ``save_rank``
#: themselves, so they must stay on every rank (dropping them deadlocks rank 0).
REPORTING_HANDLERS = ("StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "CheckpointSaver", "MetricLogger")


def rank_zero_handlers(handlers: Sequence[Any] | None) -> list[Any] | None:
    """``handlers`` on rank 0; on other ranks without the reporting/saving ones
    (:data:`REPORTING_HANDLERS`), while those that must run everywhere stay (validation, LR schedule,
    checkpoint loading)."""
    if handlers is None or is_main_process():
        return None if handlers is None else list(handlers)
    return [h for h in handlers if type(h).__name__ not in REPORTING_HANDLERS]
