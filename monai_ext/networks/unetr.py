"""UNETR (2D/3D) on the swappable-attention ViT, for any power-of-two patch size.

MONAI's :class:`monai.networks.nets.UNETR` hard-wires patch 16 (four 2x up-sampling stages). Here
the decoder has ``k = log2(patch_size)`` stages, so the same network serves patch 16 (the UNETR
paper) and the tiny patches of APF (2, 4, 8). Skip connections come from ``k - 1`` evenly spaced
transformer layers (layers 3, 6, 9 of 12 for patch 16, as in the UNETR paper) plus a convolutional
encoder of the input. The decoder blocks are MONAI's ``UnetrBasicBlock``, ``UnetrPrUpBlock``,
``UnetrUpBlock`` and ``UnetOutBlock``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetOutBlock
from torch import nn

from .vit import ViT, check_patch_grid

__all__ = ["UNETR", "skip_layers"]


def skip_layers(num_layers: int, num_stages: int) -> list[int]:
    """0-based indices of the blocks whose outputs feed the decoder's skip connections, deepest first.

    Evenly spaced: for 12 layers and 4 stages the outputs of layers 9, 6, 3 (1-based), i.e. ``[8, 5, 2]``.
    """
    idx = [round(num_layers * s / num_stages) - 1 for s in range(num_stages - 1, 0, -1)]
    return [max(0, i) for i in idx]


class UNETR(nn.Module):
    """UNETR with any registered attention and a key-padding mask.

    Args:
        in_channels, out_channels, img_size, feature_size, hidden_size, mlp_dim, num_heads, norm_name,
        conv_block, res_block, dropout_rate, spatial_dims, qkv_bias: as :class:`monai.networks.nets.UNETR`.
        patch_size: isotropic power-of-two patch size (>= 2); the decoder has ``log2(patch_size)`` stages.
        num_layers: transformer depth (12 in the UNETR paper).
        attention: registered attention name.
        dim_head, attention_kwargs, token_grid: passed to :class:`~monai_ext.networks.vit.ViT`.

    Shapes:
        ``x``: ``(B, in_channels, *img_size)``; ``mask``: optional bool ``(B, N)`` over patch tokens
        (``N = prod(img_size) / patch_size**spatial_dims``), False = padding token.
        Returns logits ``(B, out_channels, *img_size)``.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: Sequence[int] | int, patch_size: int = 16,
                 feature_size: int = 16, hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12,
                 num_layers: int = 12, norm_name: tuple | str = "instance", conv_block: bool = True,
                 res_block: bool = True, dropout_rate: float = 0.0, spatial_dims: int = 3, qkv_bias: bool = False,
                 attention: str = "softmax_free", dim_head: Optional[int] = None,
                 attention_kwargs: Optional[Mapping[str, Any]] = None, token_grid: bool = True) -> None:
        super().__init__()
        if not isinstance(patch_size, int):
            ps = tuple(patch_size)
            if len(set(ps)) != 1:
                raise ValueError(f"UNETR needs an isotropic patch size, got patch_size={ps}")
            patch_size = ps[0]
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"UNETR patch_size must be a power of two >= 2, got {patch_size}")
        img, _ = check_patch_grid(img_size, patch_size, spatial_dims)
        self.spatial_dims = spatial_dims
        self.patch_size = patch_size
        self.num_stages = int(math.log2(patch_size))
        self.grid_size = tuple(s // patch_size for s in img)
        self.hidden_size = hidden_size
        self.vit = ViT(in_channels=in_channels, img_size=img, patch_size=patch_size, hidden_size=hidden_size,
                       mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, spatial_dims=spatial_dims,
                       classification=False, dropout_rate=dropout_rate, qkv_bias=qkv_bias, attention=attention,
                       dim_head=dim_head, attention_kwargs=attention_kwargs, token_grid=token_grid)
        self.skip_layer_ids = skip_layers(num_layers, self.num_stages)
        k = self.num_stages
        self.encoder1 = UnetrBasicBlock(spatial_dims, in_channels, feature_size, kernel_size=3, stride=1,
                                        norm_name=norm_name, res_block=res_block)
        # skip s (resolution 1/2^s, s = k-1 ... 1) from a hidden state by k - s up-samplings
        self.skip_encoders = nn.ModuleList(
            UnetrPrUpBlock(spatial_dims, hidden_size, feature_size * 2**s, num_layer=k - s - 1, kernel_size=3,
                           stride=1, upsample_kernel_size=2, norm_name=norm_name, conv_block=conv_block,
                           res_block=res_block)
            for s in range(k - 1, 0, -1)
        )
        self.decoders = nn.ModuleList(
            UnetrUpBlock(spatial_dims, hidden_size if s == k - 1 else feature_size * 2 ** (s + 1),
                         feature_size * 2**s, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name,
                         res_block=res_block)
            for s in range(k - 1, -1, -1)
        )
        self.out = UnetOutBlock(spatial_dims, feature_size, out_channels)

    def proj_feat(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens -> ``(B, C, *grid)`` feature map."""
        b = x.shape[0]
        x = x.reshape([b] + list(self.grid_size) + [self.hidden_size])
        perm = [0, self.spatial_dims + 1] + list(range(1, self.spatial_dims + 1))
        return x.permute(perm).contiguous()

    def forward(self, x_in: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens, hidden = self.vit.forward_features(x_in, mask)
        skips: list[torch.Tensor] = []
        for i, enc in enumerate(self.skip_encoders):
            skips.append(enc(self.proj_feat(hidden[self.skip_layer_ids[i]])))
        skips.append(self.encoder1(x_in))
        dec = self.proj_feat(tokens)
        for i, up in enumerate(self.decoders):
            dec = up(dec, skips[i])
        return self.out(dec)
