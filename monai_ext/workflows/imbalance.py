"""Class imbalance in classification bundles (ISIC: 1.8 % malignant; AIROGS: 3.2 % referable glaucoma).

One config key, ``imbalance``, chooses the remedy:

- ``none``: plain cross-entropy, shuffled batches;
- ``loss``: cross-entropy with class weights ``n / (k * n_c)`` (scikit-learn's ``"balanced"``) from the training
  labels;
- ``sampler``: batches drawn with replacement by torch's ``WeightedRandomSampler`` so that each class is drawn
  equally often in expectation (epoch length unchanged; it uses torch's global random state, which a resumed run
  restores). Not with DDP, whose ``DistributedSampler`` replaces the sampler: :func:`check_ddp` refuses the pair.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["MODES", "balanced_sampler", "check_ddp", "class_counts", "loss_weights"]

MODES = ("none", "loss", "sampler")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"imbalance: unknown mode {mode!r}; use one of {MODES}")


def class_counts(data: Sequence[Mapping[str, Any]], num_classes: int, label_key: str = "label") -> np.ndarray:
    """Images per class ``(num_classes,)``; ``ValueError`` when a class has none (no weight can be given)."""
    labels = np.array([int(d[label_key]) for d in data], dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes}): {sorted(set(labels.tolist()))}")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"imbalance: the training data have no case of class(es) {np.flatnonzero(counts == 0)}")
    return counts


def loss_weights(mode: str, data: Sequence[Mapping[str, Any]], num_classes: int = 2) -> torch.Tensor | None:
    """``CrossEntropyLoss(weight=...)``: balanced class weights ``(num_classes,)`` for ``mode == "loss"``, else
    ``None`` (unweighted)."""
    _check_mode(mode)
    if mode != "loss":
        return None
    counts = class_counts(data, num_classes)
    weights = counts.sum() / (num_classes * counts)
    logger.info("imbalance=loss: class counts %s -> loss weights %s", counts.tolist(), np.round(weights, 4).tolist())
    return torch.as_tensor(weights, dtype=torch.float32)


def balanced_sampler(mode: str, data: Sequence[Mapping[str, Any]], num_classes: int = 2
                     ) -> torch.utils.data.WeightedRandomSampler | None:
    """A ``WeightedRandomSampler`` over ``data`` with per-case weight ``1 / n_class`` for ``mode == "sampler"``,
    else ``None`` (the loader shuffles)."""
    _check_mode(mode)
    if mode != "sampler":
        return None
    counts = class_counts(data, num_classes)
    labels = np.array([int(d["label"]) for d in data])
    weights = 1.0 / counts[labels]
    logger.info("imbalance=sampler: class counts %s, each class drawn with probability 1/%d per draw",
                counts.tolist(), num_classes)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(data),
                                                  replacement=True)


def check_ddp(mode: str) -> None:
    """Refuse ``imbalance: sampler`` under DDP (the ``DistributedSampler`` would silently replace it)."""
    _check_mode(mode)
    if mode == "sampler":
        raise ValueError("imbalance: 'sampler' cannot be combined with multi_gpu_train.yaml (DistributedSampler "
                         "replaces it); use --imbalance loss for distributed training")
