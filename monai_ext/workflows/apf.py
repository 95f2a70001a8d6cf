"""APF in MONAI's engines: the batch preparer for training on APF pseudo-images. The inferer lives in
:mod:`monai_ext.inferers`; ``monai_ext.workflows.APFInferer`` stays as an alias of it for existing configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import default_prepare_batch

from ..inferers.apf import APFInferer

__all__ = ["APFInferer", "PrepareAPFBatch"]


class PrepareAPFBatch:
    """``prepare_batch`` for SupervisedTrainer on APF pseudo-images: returns
    ``(image, label, (), {"mask": (B, L) bool})`` so the network gets the padding mask.

    Args:
        meta_key: key of the APF metadata written by :class:`~monai_ext.transforms.AdaptivePatchd`.
    """

    def __init__(self, meta_key: str = "image_apf") -> None:
        self.meta_key = meta_key

    def __call__(self, batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        meta = batchdata[self.meta_key]
        mask = torch.as_tensor(meta["mask"]).to(device=device, dtype=torch.bool)
        return image, label, (), {"mask": mask}
