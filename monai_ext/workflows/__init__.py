"""Pieces the bundle configs use around MONAI's SupervisedTrainer / SupervisedEvaluator:
distributed set-up, dataset checks before training, resume, APF batches and inference."""

from .apf import APFInferer, PrepareAPFBatch
from .checks import DatasetError, check_datalist, load_datalist
from .distributed import ddp_wrap, dist_backend, init_distributed, is_main_process, local_device, rank_zero_handlers
from .handlers import ProgressBar, ResumableCheckpoint, latest_checkpoint

__all__ = [
    "APFInferer",
    "PrepareAPFBatch",
    "DatasetError",
    "check_datalist",
    "load_datalist",
    "ddp_wrap",
    "dist_backend",
    "init_distributed",
    "is_main_process",
    "local_device",
    "rank_zero_handlers",
    "ProgressBar",
    "ResumableCheckpoint",
    "latest_checkpoint",
]
