"""How much of a segmentation survives APF patching: the upper-bound Dice of a quadtree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..transforms.apf.functional import extract_patches, quadtree_unpatch
from ..transforms.apf.utils import ArrayLike, check_chw, to_numpy

__all__ = ["upper_bound_dice"]


def upper_bound_dice(
    label: ArrayLike,
    meta: Mapping[str, Any],
    num_classes: int | None = None,
    interpolation: str = "nearest",
    mode: str = "bilinear",
) -> np.ndarray:
    """Upper bound of the full-resolution Dice reachable through APF patching:
    ``Dice(GT, unpatch(patch(GT)))`` per foreground class.

    The label ``(1, H, W)`` (integer classes) is one-hot encoded, patched with ``meta``'s tree
    (``interpolation="nearest"`` as for training labels, or ``"area"`` for soft fractions),
    unpatched with ``mode`` and arg-maxed (for two classes: probability > 0.5).

    The Dice is counted here, not with ``monai.metrics.compute_dice``: MONAI gives 1.0 (``ignore_empty=False``)
    or NaN whenever the ground truth is empty (``ignore_empty=True``), while an upper bound needs NaN only where
    a class is absent from both (a class present in the reconstruction only scores 0); the counts are exact
    integers in float64.

    Returns:
        ``(num_classes - 1,)`` float64 Dice of classes ``1 .. num_classes - 1`` (NaN where a
        class is absent from both).
    """
    lab = to_numpy(label)
    check_chw(lab, "label")
    if lab.shape[0] != 1:
        raise ValueError(f"label must be (1, H, W) integer classes, got shape {tuple(lab.shape)}.")
    lab = lab[0].astype(np.int64)
    k = int(num_classes) if num_classes is not None else max(int(lab.max()) + 1, 2)
    onehot = (lab[None] == np.arange(k)[:, None, None]).astype(np.float32)
    patched = extract_patches(onehot, meta, interpolation=interpolation, layout="patches")
    rec = quadtree_unpatch(patched, meta, layout="patches", mode=mode, argmax=True)[0].astype(np.int64)
    dice = np.full(k - 1, np.nan)
    for c in range(1, k):
        a, b = lab == c, rec == c
        denom = int(a.sum()) + int(b.sum())
        if denom:
            dice[c - 1] = 2.0 * int(np.logical_and(a, b).sum()) / denom
    return dice
