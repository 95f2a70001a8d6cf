"""APF inference for MONAI's engines: APF-UNETR on full-resolution 2D images, or on 3D volumes slice by slice
through MONAI's ``SliceInferer``, returning full-resolution logits so that MONAI's metrics, post-transforms and
savers work unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer

from ..transforms.apf.array import AdaptivePatch, AdaptiveUnpatch

__all__ = ["APFInferer", "InfererNetwork"]


class APFInferer(Inferer):
    """Full-resolution inference with APF-UNETR.

    Each 2D image ``(C, H, W)`` of a ``(B, C, H, W)`` batch is cut by the quadtree (same parameters as in
    training, :class:`~monai_ext.transforms.AdaptivePatch`), laid out as a pseudo-image, passed through the
    network with its padding mask in mini-batches of ``batch_size``, and every leaf's prediction is resized back
    into its box (:class:`~monai_ext.transforms.AdaptiveUnpatch`).

    A 3D volume ``(B, C, H, W, D)`` goes through ``monai.inferers.SliceInferer`` (``spatial_dim=2``: the last
    axis, the axial slices of the BTCV bundle) with the 2D path above as its network: ``roi_size=(-1, -1)`` (the
    full slice), no overlap and constant weights, so every slice is predicted exactly once and stacked back
    unchanged; ``batch_size`` slices per network call.

    Args:
        patch_size, num_tokens, mode: APF parameters (as :class:`~monai_ext.transforms.AdaptivePatchd`).
        batch_size: pseudo-images (2D images or slices) per network call.
        unpatch_mode: interpolation of logits back to leaf boxes.
        plan_kwargs: ``min_size``, ``max_depth``, ``split_value``, ``blur_kernel``, ``canny_low``,
            ``canny_high``, ``window``, ``edge_backend`` of :class:`~monai_ext.transforms.AdaptivePatch`.

    Returns ``(B, K, H, W)`` or ``(B, K, H, W, D)`` logits. Extra ``args`` / ``kwargs`` of ``__call__`` go to the
    network, after the pseudo-images and before ``mask=``.
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
        self.patcher = AdaptivePatch(patch_size=patch_size, num_tokens=num_tokens, mode=mode, interpolation="area",
                                     layout="grid", **plan_kwargs)
        self.unpatcher = AdaptiveUnpatch(mode=unpatch_mode, layout="grid")

    def _run(self, images: Sequence[torch.Tensor], network: Callable[..., torch.Tensor], args: Sequence[Any],
             kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """Full-resolution logits ``(K, H, W)`` of each 2D image ``(C, H, W)``."""
        outs: list[torch.Tensor] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            grids, metas = [], []
            for im in chunk:
                arr = im.detach().cpu().numpy()
                meta = self.patcher.plan(arr)
                grids.append(torch.as_tensor(self.patcher(arr, meta)))
                metas.append(meta)
            device = images[0].device
            x = torch.stack(grids).to(device=device, dtype=torch.float32)
            mask = torch.stack([torch.as_tensor(m["mask"]) for m in metas]).to(device)
            logits = network(x, *args, mask=mask, **kwargs)
            for i, meta in enumerate(metas):
                outs.append(self.unpatcher(logits[i], meta))
        return outs

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if hasattr(inputs, "as_tensor"):
            inputs = inputs.as_tensor()
        if inputs.ndim == 4:
            return torch.stack(self._run(list(inputs), network, args, kwargs))
        if inputs.ndim == 5:
            slices = SliceInferer(roi_size=(-1, -1), spatial_dim=2, sw_batch_size=self.batch_size, overlap=0.0,
                                  mode="constant", progress=False)
            return slices(inputs, lambda x: torch.stack(self._run(list(x), network, args, kwargs)))
        raise ValueError(f"APFInferer expects (B, C, H, W) or (B, C, H, W, D) input, got {tuple(inputs.shape)}")


class InfererNetwork(torch.nn.Module):
    """A network and its inferer as one module: ``forward(x) = inferer(x, network)``.

    For APF-UNETR this is the path of a user's image, ``(B, C, H, W)`` or ``(B, C, H, W, D)`` (preprocessed) ->
    APF -> ``network`` on the pseudo-images with their leaf masks -> unpatching -> full-resolution logits
    ``(B, K, H, W)`` or ``(B, K, H, W, D)``, which is what an APF bundle's metadata describes. MONAI's
    ``verify_net_in_out`` can then check that path (``net_id`` of this config item). ``network`` is a
    submodule, so ``to``/``eval``/``state_dict`` reach it (keys prefixed ``network.``).
    """

    def __init__(self, inferer: Callable[..., torch.Tensor], network: torch.nn.Module) -> None:
        super().__init__()
        self.inferer = inferer
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)
