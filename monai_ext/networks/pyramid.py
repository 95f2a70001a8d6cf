"""Pyramid transformer backbone of the efficient-transformers benchmark: only the attention changes.

Patch embedding (a ``patch_size`` conv with stride ``patch_stride``, LayerNorm), then stages of pre-norm
transformer blocks (:class:`~monai_ext.networks.vit.TransformerBlock`, any registered attention, told the
token grid), a 2x2 (3D: 2x2x2) patch merging between stages (MONAI's Swin ``PatchMergingV2``: concatenate
neighbours, LayerNorm, linear to twice the width), then LayerNorm, patch pooling (mean over tokens) and a
linear classifier.

The ``paper`` preset: patch 7 with stride 7, widths 96-192-384-768, depths 2-2-6-2, heads 3-6-12-24, MLP
ratio 4, qkv bias. At 224 x 224 it gives a 32 x 32 token grid and, with softmax attention and a
1000-class head, 28.27M parameters and 1.92 GMACs -- the benchmark's ViT row (28.27M, 1.91 GFLOPs, which
are multiply-accumulates as for its ResNet-50's 4.0). A stride-4 patch embedding would give 56 x 56 tokens
and ~4.5 GMACs (Swin-T), far from the table; see ``docs/benchmarks.md`` (``monai-ext bench attention-zoo``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, List, Optional

import torch
from monai.networks.nets.swin_unetr import PatchMergingV2
from torch import nn

from .attention import block_attention_kwargs, check_attention_name
from .vit import TransformerBlock, _as_tuple

__all__ = ["PyramidTransformer", "PYRAMID_PRESETS", "pyramid_preset"]

#: ``paper``: the benchmark's ~28M-parameter setting (see the module docstring); ``cpu``: a tiny one.
PYRAMID_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(patch_size=7, patch_stride=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                  mlp_ratio=4.0, qkv_bias=True),
    "cpu": dict(patch_size=7, patch_stride=7, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                mlp_ratio=2.0, qkv_bias=True),
}


def pyramid_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a named preset, updated with ``overrides``."""
    if name not in PYRAMID_PRESETS:
        raise ValueError(f"unknown pyramid preset {name!r}; available: {sorted(PYRAMID_PRESETS)}")
    return {**PYRAMID_PRESETS[name], **overrides}


class PyramidTransformer(nn.Module):
    """Hierarchical transformer classifier with any registered attention, 2D or 3D.

    Args:
        in_channels: input channels.
        num_classes: classifier outputs.
        img_size: spatial size, divisible by ``patch_stride``.
        spatial_dims: 2 or 3.
        patch_size: patch-embedding kernel.
        patch_stride: patch-embedding stride (default ``patch_size``: non-overlapping); an overlapping
            embedding (stride < kernel) pads by ``patch_size // 2``.
        embed_dim: width of the first stage; doubled by every patch merging.
        depths: blocks per stage.
        num_heads: heads per stage.
        mlp_ratio: MLP width / token width.
        qkv_bias, dropout_rate: as :class:`~monai_ext.networks.vit.ViT`.
        attention: registered attention name.
        attention_kwargs: extra arguments of every attention module (override the per-block defaults of
            ``block_defaults``, e.g. ``window_size``).
        preset: a :data:`PYRAMID_PRESETS` name; explicitly passed arguments win over it.

    Shapes:
        ``x``: ``(B, in_channels, *img_size)`` -> logits ``(B, num_classes)``;
        :meth:`forward_features` -> pooled features ``(B, embed_dim * 2**(stages - 1))``.
    """

    def __init__(self, in_channels: int, num_classes: int, img_size: Sequence[int] | int, spatial_dims: int = 2,
                 patch_size: Optional[int] = None, patch_stride: Optional[int] = None,
                 embed_dim: Optional[int] = None, depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None, mlp_ratio: Optional[float] = None,
                 qkv_bias: Optional[bool] = None, dropout_rate: float = 0.0, attention: str = "softmax",
                 attention_kwargs: Optional[Mapping[str, Any]] = None, preset: str = "paper") -> None:
        super().__init__()
        given = dict(patch_size=patch_size, patch_stride=patch_stride, embed_dim=embed_dim, depths=depths,
                     num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        cfg = pyramid_preset(preset, **{k: v for k, v in given.items() if v is not None})
        check_attention_name(attention)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        depths, heads = [int(d) for d in cfg["depths"]], [int(h) for h in cfg["num_heads"]]
        if len(depths) != len(heads) or not depths or min(depths) < 1:
            raise ValueError(f"depths={depths} and num_heads={heads} need one positive entry per stage")
        k = int(cfg["patch_size"])
        stride = int(cfg.get("patch_stride") or k)
        self.img_size = _as_tuple(img_size, spatial_dims, "img_size")
        if any(s % stride for s in self.img_size):
            raise ValueError(f"img_size={self.img_size} must be divisible by the patch stride {stride} "
                             f"(e.g. {tuple(max(stride, s // stride * stride) for s in self.img_size)})")
        self.spatial_dims, self.in_channels, self.attention = spatial_dims, in_channels, attention
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        dim = int(cfg["embed_dim"])
        self.patch_embed = conv(in_channels, dim, k, stride=stride, padding=k // 2 if stride < k else 0)
        self.embed_norm = nn.LayerNorm(dim)
        grid = [s // stride for s in self.img_size]
        self.stage_grids: List[List[int]] = []
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        for s, (depth, h) in enumerate(zip(depths, heads)):
            if dim % h:
                raise ValueError(f"stage {s}: width {dim} is not divisible by num_heads={h}")
            self.stage_grids.append(list(grid))
            n = math.prod(grid)
            self.stages.append(nn.ModuleList(
                TransformerBlock(dim, int(dim * cfg["mlp_ratio"]), h, dropout_rate, bool(cfg["qkv_bias"]), attention,
                                 attention_kwargs=block_attention_kwargs(attention, i, n, grid, attention_kwargs))
                for i in range(depth)))
            if s < len(depths) - 1:
                self.merges.append(PatchMergingV2(dim, spatial_dims=spatial_dims))
                grid = [(g + 1) // 2 for g in grid]
                dim *= 2
        self.num_features = dim
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or list(x.shape[1:]) != [self.in_channels] + list(self.img_size):
            raise ValueError(f"expected input (B, {self.in_channels}, *{self.img_size}), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *img_size)`` -> pooled ``(B, num_features)``."""
        self._check_input(x)
        b = x.shape[0]
        t = self.embed_norm(self.patch_embed(x).flatten(2).transpose(1, 2))  # (B, N, C)
        for s, blocks in enumerate(self.stages):
            grid = self.stage_grids[s]
            for blk in blocks:
                t = blk(t, None, grid)
            if s < len(self.merges):
                t = self.merges[s](t.reshape([b] + grid + [t.shape[-1]])).flatten(1, -2)
        return self.norm(t).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
