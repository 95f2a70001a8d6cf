"""The softmax-free paper's fine-tuning (Sec. 3.4): a network initialised from the best softmax checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from monai_ext.utils.checkpoint import CheckpointError, transfer_weights

logger = logging.getLogger(__name__)

__all__ = ["init_from_checkpoint"]


def init_from_checkpoint(network: torch.nn.Module, ckpt: str | Path, report_dir: str | Path,
                         resume: bool = False) -> torch.nn.Module:
    """Copy the weights of ``ckpt`` into ``network`` (:func:`~monai_ext.utils.checkpoint.transfer_weights`,
    weights only), log what was copied and write it to ``report_dir/transfer.json``; return ``network``.

    With ``resume`` the run's own checkpoint is loaded afterwards, so nothing is transferred (and said so).
    """
    if resume:
        logger.info("resuming: the run's own checkpoint replaces the weights; no transfer from %s", ckpt)
        return network
    path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(f"{path}: softmax checkpoint not found (train the softmax variant first, e.g. "
                              "--network_def#attention softmax --ckpt_dir models/softmax, or give --ckpt PATH)")
    report = transfer_weights(network, path)
    logger.info("initialised from %s: %s", path, report.summary())
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = {"source": str(path.resolve()), "summary": report.summary(), **dataclasses.asdict(report)}
    (out / "transfer.json").write_text(json.dumps(body, indent=2) + "\n")
    return network
