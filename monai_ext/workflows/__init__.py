"""Pieces the bundle configs use around MONAI's SupervisedTrainer / SupervisedEvaluator:
distributed set-up, dataset checks before training, identified and exactly resumable runs, APF batches and
inference, and the set-up a bundle run calls first (errors as the last lines, no benign warnings)."""

from .apf import APFInferer, PrepareAPFBatch
from .checks import DatasetError, check_datalist, load_datalist
from .distributed import (
    ddp_wrap,
    dist_backend,
    init_distributed,
    is_main_process,
    local_device,
    rank_zero_handlers,
)
from .entry import install_error_hook, running_as_bundle, setup_run
from .handlers import EpochAverage, ProgressBar, ResumableCheckpoint, latest_checkpoint
from .runs import ResumeError

__all__ = [
    "APFInferer",
    "DatasetError",
    "EpochAverage",
    "PrepareAPFBatch",
    "ProgressBar",
    "ResumableCheckpoint",
    "ResumeError",
    "check_datalist",
    "ddp_wrap",
    "dist_backend",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "load_datalist",
    "local_device",
    "rank_zero_handlers",
    "setup_run",
]

if running_as_bundle():  # `python -m monai.bundle run ...`: every config that imports monai_ext.workflows
    install_error_hook()
