"""APF-UNETR: the 2D UNETR on APF's pseudo-image, one token per quadtree leaf.

:class:`monai_ext.transforms.AdaptivePatchd` (layout ``"grid"``) turns an ``H x W`` image into a
pseudo-image ``(C, S*p, S*p)`` holding ``L = S*S`` leaves, each resized to ``p x p``, leaf ``i`` at
the ``i``-th cell of a Z-curve over the ``S x S`` grid. A UNETR with patch size ``p`` on that
pseudo-image sees exactly one token per leaf. Padded leaves (fixed-length mode pads to ``L``) are
masked out of attention. With the ``uniform`` APF mode the same network is the plain UNETR baseline.
The leaves are not spatial neighbours on that grid, so attention types that need the token grid
(``window``, ``xca`` with local patch interaction) are refused here with a clear error.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ..utils.zorder import zorder_grid
from .unetr import UNETR

__all__ = ["APFUNETR"]


class APFUNETR(nn.Module):
    """UNETR (2D) over APF pseudo-images.

    Args:
        in_channels, out_channels: image channels and classes.
        num_tokens: ``L``, leaves per image (a perfect square).
        patch_size: ``p``, the size every leaf is resized to (power of two >= 2).
        **unetr_kwargs: ``feature_size``, ``hidden_size``, ``mlp_dim``, ``num_heads``, ``num_layers``,
            ``attention``, ``dropout_rate``, ``qkv_bias``, ``norm_name``, ... of :class:`UNETR`.

    Shapes:
        ``x``: ``(B, C, S*p, S*p)`` pseudo-image; ``mask``: optional ``(B, L)`` bool in leaf (Z) order,
        False = padding.
        Returns logits ``(B, out_channels, S*p, S*p)`` on the pseudo-image (unpatch them with
        :class:`monai_ext.transforms.AdaptiveUnpatchd`).
    """

    def __init__(self, in_channels: int, out_channels: int, num_tokens: int, patch_size: int = 4,
                 **unetr_kwargs: Any) -> None:
        super().__init__()
        side = math.isqrt(int(num_tokens))
        if side * side != num_tokens:
            raise ValueError(f"num_tokens={num_tokens} must be a perfect square for the APF grid layout "
                             f"(e.g. {side * side} or {(side + 1) ** 2})")
        self.num_tokens = num_tokens
        self.side = side
        self.patch_size = patch_size
        self.unetr = UNETR(in_channels, out_channels, img_size=(side * patch_size, side * patch_size),
                           patch_size=patch_size, spatial_dims=2, token_grid=False, **unetr_kwargs)
        rows, cols = zorder_grid(side)
        # leaf i sits at raster token rows[i] * S + cols[i]
        self.register_buffer("leaf_to_token", torch.as_tensor(rows * side + cols, dtype=torch.long),
                             persistent=False)

    def token_order(self, per_leaf: torch.Tensor) -> torch.Tensor:
        """``(B, L, ...)`` in leaf order -> ``(B, L, ...)`` in the ViT's raster token order."""
        out = torch.zeros_like(per_leaf)
        out[:, self.leaf_to_token] = per_leaf
        return out

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        token_mask: Optional[torch.Tensor] = None
        if mask is not None:
            token_mask = self.token_order(mask.to(torch.bool))
        return self.unetr(x, token_mask)
