"""Vision Transformer (2D/3D) with a swappable attention type.

Argument names follow :class:`monai.networks.nets.ViT`; ``attention`` picks a registered attention
(:mod:`monai_ext.networks.attention`). The patch embedding (conv projection + learnable position
embedding) and the MLP are MONAI's own blocks; only the transformer block is new, because MONAI's
``TransformerBlock`` hard-wires its ``SABlock``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, List, Optional

import torch
from monai.networks.blocks import MLPBlock, PatchEmbeddingBlock
from torch import nn

from monai_ext.utils.checkpoint import (  # one checkpoint loader (weights only)
    TransferReport,
    transfer_weights,
)

from .attention import block_attention_kwargs, build_attention, check_attention_name

__all__ = ["ViT", "TransformerBlock", "VIT_PRESETS", "vit_preset", "transfer_weights", "TransferReport"]

logger = logging.getLogger(__name__)

#: named hyper-parameter sets. ``paper_*`` follow Table 1 of the softmax-free paper (8 layers,
#: 8 heads, MLP 1024; the table's 1024/512 rows read as hidden size / per-head dimension);
#: ``small_*``/``tiny_*`` are CPU-sized.
VIT_PRESETS: dict[str, dict[str, Any]] = {
    "paper_2d": dict(spatial_dims=2, in_channels=3, patch_size=16, hidden_size=1024, dim_head=512,
                     mlp_dim=1024, num_layers=8, num_heads=8),
    "paper_3d": dict(spatial_dims=3, in_channels=1, patch_size=(16, 16, 4), hidden_size=1024, dim_head=512,
                     mlp_dim=1024, num_layers=8, num_heads=8),
    "paper_wsi": dict(hidden_size=512, dim_head=512, mlp_dim=512, num_layers=2, num_heads=8),
    "small_2d": dict(spatial_dims=2, in_channels=3, patch_size=16, hidden_size=192, mlp_dim=384,
                     num_layers=4, num_heads=4),
    "small_3d": dict(spatial_dims=3, in_channels=1, patch_size=(16, 16, 4), hidden_size=192, mlp_dim=384,
                     num_layers=4, num_heads=4),
    "tiny_2d": dict(spatial_dims=2, in_channels=1, patch_size=8, hidden_size=64, mlp_dim=128,
                    num_layers=2, num_heads=4),
    "tiny_3d": dict(spatial_dims=3, in_channels=1, patch_size=(8, 8, 4), hidden_size=64, mlp_dim=128,
                    num_layers=2, num_heads=4),
}


def vit_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a named preset, updated with ``overrides``."""
    if name not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; available: {sorted(VIT_PRESETS)}")
    return {**VIT_PRESETS[name], **overrides}


def _as_tuple(value: Sequence[int] | int, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name}={value} has {len(value)} dims but spatial_dims={n}")
    return value


def check_patch_grid(img_size: Sequence[int] | int, patch_size: Sequence[int] | int,
                     spatial_dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate sizes; returns ``(img_size, patch_size)`` as tuples of length ``spatial_dims``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    img = _as_tuple(img_size, spatial_dims, "img_size")
    patch = _as_tuple(patch_size, spatial_dims, "patch_size")
    for i, p in zip(img, patch):
        if p < 1 or i < 1:
            raise ValueError(f"img_size={img} and patch_size={patch} must be positive")
        if i % p != 0:
            raise ValueError(
                f"img_size={img} is not divisible by patch_size={patch}: every image dimension must be a "
                f"multiple of the patch size (e.g. img_size={tuple(max(p, (s // p) * p) for s, p in zip(img, patch))})"
            )
    return img, patch


class LayerScale(nn.Module):
    """Learnable per-channel scale of a residual branch (CaiT), initialised to ``init``. ``(..., C)``."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + Attn(LN(x), mask, grid_shape)``, then ``x + MLP(LN(x))``. ``(B, N, C) -> (B, N, C)``.
    With ``layer_scale``, each branch is multiplied by a learnable per-channel scale starting there."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0,
                 qkv_bias: bool = False, attention: str = "softmax_free", dim_head: Optional[int] = None,
                 attention_kwargs: Optional[Mapping[str, Any]] = None, layer_scale: Optional[float] = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = build_attention(attention, hidden_size=hidden_size, num_heads=num_heads,
                                    dropout_rate=dropout_rate, qkv_bias=qkv_bias, dim_head=dim_head,
                                    **dict(attention_kwargs or {}))
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate)
        self.ls1: nn.Module = LayerScale(hidden_size, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2: nn.Module = LayerScale(hidden_size, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                grid_shape: Optional[List[int]] = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), mask, grid_shape))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer with any registered attention, 2D or 3D.

    Args:
        in_channels: input channels.
        img_size: spatial size, e.g. ``(224, 224)`` or ``(128, 128, 32)``; divisible by ``patch_size``.
        patch_size: patch size per dimension.
        hidden_size: token dimension ``C``.
        mlp_dim: MLP hidden dimension.
        num_layers: number of transformer blocks.
        num_heads: attention heads.
        spatial_dims: 2 or 3.
        classification: add a class token and a linear head; ``forward`` returns logits.
        num_classes: outputs of the head.
        dropout_rate: dropout in embedding, attention output and MLP.
        qkv_bias: bias of the qkv projection.
        attention: registered attention name (``softmax_free``, ``softmax``, ``sima``, ...).
        dim_head: per-head dimension (default ``hidden_size // num_heads``).
        attention_kwargs: extra keyword arguments of the attention module (e.g. ``eps``).
        pooling: what the head sees: the class token (``"cls"``, ViT), the mean of the real patch
            tokens (``"mean"``, often better when training from scratch on small data) or their
            feature-wise maximum (``"max"``: a finding anywhere in the image, e.g. a small lesion, is
            not averaged away over thousands of tokens).
        layer_scale: if set, every residual branch is scaled by a learnable per-channel factor
            initialised to this value (CaiT's LayerScale, e.g. ``1e-2``); each block then starts
            near the identity, which helps small data (see the DUKE bundle's README).
        token_grid: the patch tokens form the ``img_size / patch_size`` grid and the attention is told so
            (``grid_shape``; ``window`` and ``xca``'s local patch interaction need it). False where the
            tokens are not spatial neighbours (APF-UNETR's quadtree leaves): such attention types then
            raise a ValueError here.

    Shapes:
        ``x``: ``(B, in_channels, *img_size)``; ``mask``: optional ``(B, N)`` bool over the
        ``N = prod(img_size / patch_size)`` patch tokens (True = real; the class token is always real).
        ``forward`` -> ``(B, num_classes)`` if ``classification`` else ``(B, N, C)`` final tokens.
        ``forward_features`` -> ``(tokens (B, N[+1], C) after the final norm, [hidden state of every block])``.
    """

    def __init__(self, in_channels: int, img_size: Sequence[int] | int, patch_size: Sequence[int] | int,
                 hidden_size: int = 768, mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12,
                 spatial_dims: int = 3, classification: bool = False, num_classes: int = 2,
                 dropout_rate: float = 0.0, qkv_bias: bool = False, attention: str = "softmax_free",
                 dim_head: Optional[int] = None, attention_kwargs: Optional[Mapping[str, Any]] = None,
                 pooling: str = "cls", layer_scale: Optional[float] = None, token_grid: bool = True) -> None:
        super().__init__()
        check_attention_name(attention)
        if layer_scale is not None and (isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float))
                                        or not layer_scale > 0):
            raise ValueError(f"layer_scale must be a positive number or None, got {layer_scale!r}")
        if pooling not in ("cls", "mean", "max"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'max', got {pooling!r}")
        self.pooling = pooling
        self.img_size, self.patch_size = check_patch_grid(img_size, patch_size, spatial_dims)
        if dim_head is None and hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.attention = attention
        self.classification = classification
        self.grid_size = tuple(i // p for i, p in zip(self.img_size, self.patch_size))
        self.num_patches = 1
        for g in self.grid_size:
            self.num_patches *= g
        # MONAI's PatchEmbeddingBlock validates hidden_size % num_heads itself; with a custom
        # dim_head we pass 1 head there (it does not use heads otherwise).
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels, img_size=self.img_size, patch_size=self.patch_size,
            hidden_size=hidden_size, num_heads=num_heads if dim_head is None else 1,
            proj_type="conv", pos_embed_type="learnable", dropout_rate=dropout_rate, spatial_dims=spatial_dims,
        )
        self.token_grid = bool(token_grid)
        self.grid_list: List[int] = [int(g) for g in self.grid_size]
        grid = self.grid_list if self.token_grid else None
        n_tokens = self.num_patches + (1 if classification else 0)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, attention, dim_head,
                             block_attention_kwargs(attention, i, n_tokens, grid, attention_kwargs), layer_scale)
            for i in range(num_layers)
        )
        if not self.token_grid and any(getattr(b.attn, "needs_grid", False) for b in self.blocks):
            raise ValueError(f"attention {attention!r} needs the tokens' spatial grid, but this network's tokens "
                             "do not form one (token_grid=False, e.g. APF-UNETR's quadtree leaves); choose another "
                             "attention" + (" or attention_kwargs lpi=False" if attention == "xca" else ""))
        self.norm = nn.LayerNorm(hidden_size)
        if classification:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            self.classification_head = nn.Linear(hidden_size, num_classes)
        else:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size), requires_grad=False)
            self.classification_head = nn.Identity()

    @torch.jit.unused
    def _input_error(self, x: torch.Tensor) -> str:
        return (f"expected input (B, {self.in_channels}, *{self.img_size}) with {self.spatial_dims} spatial dims, "
                f"got shape {tuple(x.shape)}")

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_scripting():
            return
        if x.dim() != self.spatial_dims + 2 or list(x.shape[1:]) != [self.in_channels] + list(self.img_size):
            raise ValueError(self._input_error(x))

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Final normed tokens ``(B, N[+1], C)`` and the list of every block's output."""
        self._check_input(x)
        x = self.patch_embedding(x)  # (B, N, C)
        if mask is not None:
            mask = mask.to(torch.bool)
        if self.classification:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            if mask is not None:
                mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        grid: Optional[List[int]] = None
        if self.token_grid:
            grid = self.grid_list
        hidden_states: list[torch.Tensor] = []
        for blk in self.blocks:
            x = blk(x, mask, grid)
            hidden_states.append(x)
        return self.norm(x), hidden_states

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens, _ = self.forward_features(x, mask)
        if self.classification:
            if self.pooling == "mean":
                patches = tokens[:, 1:]
                if mask is None:
                    return self.classification_head(patches.mean(dim=1))
                m = mask.to(patches.dtype).unsqueeze(-1)
                return self.classification_head((patches * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0))
            if self.pooling == "max":
                patches = tokens[:, 1:]
                if mask is not None:
                    patches = patches.masked_fill(~mask.to(torch.bool).unsqueeze(-1), float("-inf"))
                return self.classification_head(patches.amax(dim=1))
            return self.classification_head(tokens[:, 0])
        return tokens
