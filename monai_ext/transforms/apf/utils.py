"""Array helpers shared by the APF modules: the optional OpenCV import (one switch, ``HAS_CV2``, for every
OpenCV fast path), a numpy view of arrays / tensors, shape and finiteness checks, powers of two."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

cv2, HAS_CV2 = optional_import("cv2")

__all__ = ["HAS_CV2", "ArrayLike", "check_chw", "check_finite", "cv2", "is_pow2", "next_pow2", "to_numpy"]

ArrayLike = Any  # np.ndarray | torch.Tensor (incl. MetaTensor)


def is_pow2(n: int) -> bool:
    """``n`` is a positive power of two."""
    return n >= 1 and (n & (n - 1)) == 0


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def to_numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a numpy array (tensors and MetaTensors detached and moved to the CPU; no copy otherwise)."""
    if isinstance(x, torch.Tensor):
        t = x.as_tensor() if hasattr(x, "as_tensor") else x
        return t.detach().cpu().numpy()
    return np.asarray(x)


def check_chw(arr: np.ndarray, name: str) -> None:
    """``ValueError`` naming ``name`` unless ``arr`` is a non-empty channel-first 2D image ``(C, H, W)``."""
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a channel-first 2D image (C, H, W), got shape {tuple(arr.shape)}.")
    if min(arr.shape) < 1:
        raise ValueError(f"{name}: empty image of shape {tuple(arr.shape)}.")


def check_finite(arr: np.ndarray, name: str) -> None:
    """``ValueError`` naming ``name`` if a floating-point ``arr`` holds NaN or inf."""
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values: APF patching needs a finite image.")
