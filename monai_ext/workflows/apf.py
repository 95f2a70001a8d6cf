"""APF in MONAI's engines: a batch preparer for training on pseudo-images and an inferer that runs
APF-UNETR on full-resolution 2D images or 3D volumes (slice by slice) and returns full-resolution
logits, so MONAI's metrics, post-transforms and savers work unchanged."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer

from ..transforms.apf import plan_quadtree, extract_patches, quadtree_unpatch

logger = logging.getLogger(__name__)


class PrepareAPFBatch:
    """``prepare_batch`` for SupervisedTrainer on APF pseudo-images: returns
    ``(image, label, (), {"mask": (B, L) bool})`` so the network gets the padding mask.

    Args:
        meta_key: key of the APF metadata written by :class:`~monai_ext.transforms.AdaptivePatchd`.
    """

    def __init__(self, meta_key: str = "image_apf") -> None:
        self.meta_key = meta_key

    def __call__(self, batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        meta = batchdata[self.meta_key]
        mask = torch.as_tensor(meta["mask"]).to(device=device, dtype=torch.bool)
        return image, label, (), {"mask": mask}


class APFInferer(Inferer):
    """Full-resolution inference with APF-UNETR.

    Each 2D image ``(C, H, W)`` of the batch -- or, for 3D input ``(B, C, H, W, D)``, each slice along
    the last axis -- is cut by the quadtree (same parameters as in training), laid out as a pseudo-image,
    passed through the network with its padding mask in mini-batches, and every leaf's prediction is
    resized back into its box (:func:`~monai_ext.transforms.quadtree_unpatch`).

    Args:
        patch_size, num_tokens, mode: APF parameters (as :class:`~monai_ext.transforms.AdaptivePatchd`).
        batch_size: pseudo-images per network call.
        unpatch_mode: interpolation of logits back to leaf boxes.
        plan_kwargs: ``min_size``, ``max_depth``, ``split_value``, ``blur_kernel``, ``canny_low``,
            ``canny_high``, ``window``, ... of :func:`~monai_ext.transforms.plan_quadtree`.

    Returns ``(B, K, H, W)`` or ``(B, K, H, W, D)`` logits.
    """

    def __init__(self, patch_size: int, num_tokens: int, mode: str = "fixed", batch_size: int = 8,
                 unpatch_mode: str = "bilinear", **plan_kwargs: Any) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_tokens = num_tokens
        self.mode = mode
        self.batch_size = batch_size
        self.unpatch_mode = unpatch_mode
        self.plan_kwargs = plan_kwargs

    def _run(self, images: Sequence[torch.Tensor], network, args, kwargs) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            grids, metas = [], []
            for im in chunk:
                arr = im.detach().cpu().numpy()
                meta = plan_quadtree(arr, patch_size=self.patch_size, num_tokens=self.num_tokens, mode=self.mode,
                                     **self.plan_kwargs)
                grids.append(torch.as_tensor(extract_patches(arr, meta, interpolation="area")))
                metas.append(meta)
            device = images[0].device
            x = torch.stack(grids).to(device=device, dtype=torch.float32)
            mask = torch.stack([torch.as_tensor(m["mask"]) for m in metas]).to(device)
            logits = network(x, *args, mask=mask, **kwargs)
            for i, meta in enumerate(metas):
                outs.append(quadtree_unpatch(logits[i], meta, mode=self.unpatch_mode))
        return outs

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hasattr(inputs, "as_tensor"):
            inputs = inputs.as_tensor()
        if inputs.ndim == 4:
            outs = self._run(list(inputs), network, args, kwargs)
            return torch.stack(outs)
        if inputs.ndim == 5:
            b, _, _, _, d = inputs.shape
            slices = [inputs[i, ..., z] for i in range(b) for z in range(d)]
            outs = self._run(slices, network, args, kwargs)
            vol = torch.stack(outs).reshape(b, d, *outs[0].shape)  # (B, D, K, H, W)
            return vol.permute(0, 2, 3, 4, 1).contiguous()
        raise ValueError(f"APFInferer expects (B, C, H, W) or (B, C, H, W, D) input, got {tuple(inputs.shape)}")
