"""Ignite handlers: resume from the latest checkpoint, a progress bar that works on ignite 0.4/0.5."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader

try:  # ignite >= 0.5
    from ignite.handlers import ProgressBar as _IgniteProgressBar
except ImportError:  # ignite 0.4.x (MONAI Label's environment)
    from ignite.contrib.handlers import ProgressBar as _IgniteProgressBar

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> Path | None:
    """The ``checkpoint_epoch=N.pt`` file with the highest ``N`` in ``ckpt_dir`` (MONAI CheckpointSaver's
    interval naming), or None."""
    best: tuple[int, Path] | None = None
    for p in Path(ckpt_dir).glob(f"{prefix}_epoch=*.pt"):
        m = _EPOCH.search(p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return None if best is None else best[1]


class ResumableCheckpoint:
    """Save a full training checkpoint every ``save_interval`` epochs and, with ``resume=True``, load
    the latest one before training starts.

    The saved objects are ``objects`` (network, optimizer, scheduler, ...) plus the trainer itself
    (epoch and iteration), added when the handler is attached, so the config needs no reference
    from a trainer handler back to the trainer. Files are ignite's ``checkpoint_epoch=N.pt``, written
    atomically (rank 0 only under DDP); only the newest ``n_saved`` are kept. A training killed at any
    moment, even while a checkpoint is written, restarts from the last finished epoch. Without a
    checkpoint in ``ckpt_dir``, ``resume`` logs that and starts from scratch.
    """

    def __init__(self, ckpt_dir: str | Path, objects: Mapping[str, Any], resume: bool = False,
                 save_interval: int = 1, n_saved: int = 1, map_location: Any = None) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = dict(objects)
        self.resume = bool(resume)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.prefix = "checkpoint"
        self.map_location = map_location if map_location is not None else ("cuda" if torch.cuda.is_available() else "cpu")

    def attach(self, engine) -> None:
        from ignite.engine import Events
        from ignite.handlers import Checkpoint, DiskSaver

        objects = {**self.objects, "trainer": engine}
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir, self.prefix)
            if path is None:
                logger.info("resume requested but no %s_epoch=*.pt in %s: starting from scratch", self.prefix,
                            self.ckpt_dir)
            else:
                logger.info("resuming from %s", path)
                CheckpointLoader(load_path=str(path), load_dict=objects, map_location=self.map_location).attach(engine)
        # ignite names multi-object checkpoints "checkpoint_epoch=N.pt" (prefix "" keeps it so). Written
        # atomically (temporary file, then rename): MONAI's CheckpointSaver writes in place, so a kill
        # during the write left a listed but truncated checkpoint that could not be resumed from.
        saver = Checkpoint(objects, DiskSaver(str(self.ckpt_dir), require_empty=False, atomic=True),
                           filename_prefix="", score_function=lambda e: e.state.epoch, score_name="epoch",
                           n_saved=self.n_saved)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), saver)


class ProgressBar(_IgniteProgressBar):
    """ignite's tqdm progress bar as a MONAI handler (``attach(engine)`` with defaults)."""

    def __init__(self, persist: bool = False, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().attach(engine, *args, output_transform=kwargs.pop("output_transform", _loss_of), **kwargs)


def _loss_of(output: Any) -> dict[str, float]:
    """Show the batch loss of MONAI's decollated trainer output."""
    if isinstance(output, list) and output and isinstance(output[0], Mapping) and "loss" in output[0]:
        loss = output[0]["loss"]
        return {"loss": float(loss)}
    if isinstance(output, Mapping) and "loss" in output:
        return {"loss": float(output["loss"])}
    return {}
