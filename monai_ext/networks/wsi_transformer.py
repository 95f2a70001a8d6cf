"""Transformer over a whole-slide image's sequence of tile features (the softmax-free paper's ``ViTWSI``).

A slide is a variable-length sequence of ``N`` tile feature vectors (e.g. 2048-d RetCCL / ResNet-50 features,
one per tissue tile). The network projects them linearly to the hidden size, runs the transformer blocks of
:mod:`monai_ext.networks.vit` with any registered attention (``softmax``, ``softmax_free``, ``sima``) and a
key-padding mask, pools over the real tokens only and classifies. There is no position embedding: the
paper's WSI model has no patch grid (Table 1: "Patch Size -") and tiles come in no fixed order.

Slides of different lengths are batched by padding to the longest one with a ``(B, N)`` mask (True = real
token): padded tokens contribute nothing to any real token, to the sequence statistics of ``softmax_free`` or
to the pooled vector, so a slide's output does not depend on what it is batched with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from .attention import check_attention_name
from .vit import VIT_PRESETS, TransformerBlock

__all__ = ["WSITransformer", "WSI_PRESETS", "wsi_preset"]

#: ``paper_wsi``: Table 1 of the softmax-free paper, column ViTWSI (2 layers, 8 heads, MLP 512, hidden 512,
#: per-head dimension 512 read as in :data:`monai_ext.networks.vit.VIT_PRESETS`); ``cpu``: a size that trains
#: on sequences of thousands of tokens on a laptop CPU in minutes.
WSI_PRESETS: dict[str, dict[str, Any]] = {
    "paper_wsi": dict(VIT_PRESETS["paper_wsi"]),
    "cpu": dict(hidden_size=64, dim_head=None, mlp_dim=128, num_layers=2, num_heads=4),
}


def wsi_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a named :class:`WSITransformer` size, updated with ``overrides``."""
    if name not in WSI_PRESETS:
        raise ValueError(f"unknown WSI transformer preset {name!r}; available: {sorted(WSI_PRESETS)}")
    return {**WSI_PRESETS[name], **overrides}


class WSITransformer(nn.Module):
    """Slide-level classifier over tile features with a padding mask.

    Args:
        in_features: ``D``, dimension of the tile features (2048 for a ResNet-50).
        num_classes: outputs of the head.
        hidden_size, mlp_dim, num_layers, num_heads, dim_head: transformer sizes (``preset`` fills them).
        attention: registered attention name.
        pooling: ``"mean"`` of the real tokens, their feature-wise ``"max"``, or a class token (``"cls"``).
        dropout_rate: dropout after the input projection, in attention output and MLP.
        qkv_bias, attention_kwargs, layer_scale: as in :class:`monai_ext.networks.ViT`.
        preset: a name of :data:`WSI_PRESETS` giving the sizes not passed explicitly.

    Shapes:
        ``x``: ``(B, N, D)`` float; ``mask``: optional ``(B, N)`` bool (True = real tile). Returns logits
        ``(B, num_classes)``; :meth:`forward_features` returns the final normed tokens ``(B, N[+1], C)``.
    """

    def __init__(self, in_features: int, num_classes: int = 2, hidden_size: Optional[int] = None,
                 mlp_dim: Optional[int] = None, num_layers: Optional[int] = None, num_heads: Optional[int] = None,
                 dim_head: Optional[int] = None, attention: str = "softmax_free", pooling: str = "mean",
                 dropout_rate: float = 0.0, qkv_bias: bool = False,
                 attention_kwargs: Optional[Mapping[str, Any]] = None, layer_scale: Optional[float] = None,
                 preset: Optional[str] = "paper_wsi") -> None:
        super().__init__()
        check_attention_name(attention)
        if pooling not in ("cls", "mean", "max"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'max', got {pooling!r}")
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        sizes = wsi_preset(preset) if preset is not None else {}
        given = dict(hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads)
        for key, value in given.items():
            if value is not None:
                sizes[key] = value
            elif key not in sizes:
                raise ValueError(f"{key} is required when no preset is given")
        if dim_head is not None or hidden_size is not None or num_heads is not None:
            sizes["dim_head"] = dim_head  # explicit sizes: the preset's head dimension does not apply
        if sizes.get("dim_head") is None and sizes["hidden_size"] % sizes["num_heads"] != 0:
            raise ValueError(f"hidden_size ({sizes['hidden_size']}) must be divisible by num_heads "
                             f"({sizes['num_heads']}) or set dim_head")
        if sizes["num_layers"] < 1:
            raise ValueError(f"num_layers must be >= 1, got {sizes['num_layers']}")
        self.in_features = int(in_features)
        self.hidden_size = int(sizes["hidden_size"])
        self.attention = attention
        self.pooling = pooling
        self.input_proj = nn.Sequential(nn.Linear(self.in_features, self.hidden_size), nn.Dropout(dropout_rate))
        self.blocks = nn.ModuleList(
            TransformerBlock(self.hidden_size, int(sizes["mlp_dim"]), int(sizes["num_heads"]), dropout_rate,
                             qkv_bias, attention, sizes.get("dim_head"), attention_kwargs, layer_scale)
            for _ in range(int(sizes["num_layers"]))
        )
        self.norm = nn.LayerNorm(self.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.hidden_size), requires_grad=pooling == "cls")
        if pooling == "cls":
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.classification_head = nn.Linear(self.hidden_size, num_classes)

    @torch.jit.unused
    def _input_error(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> str:
        m = "" if mask is None else f" and mask {tuple(mask.shape)}"
        return f"expected features (B, N, {self.in_features}) and mask (B, N), got {tuple(x.shape)}{m}"

    def _check_input(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        if torch.jit.is_scripting():
            return
        if x.dim() != 3 or x.shape[-1] != self.in_features or (
                mask is not None and (mask.dim() != 2 or list(mask.shape) != list(x.shape[:2]))):
            raise ValueError(self._input_error(x, mask))

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final normed tokens ``(B, N[+1], C)`` (a leading class token with ``pooling="cls"``)."""
        self._check_input(x, mask)
        x = self.input_proj(x.float())
        if mask is not None:
            mask = mask.to(torch.bool)
            x = x * mask.unsqueeze(-1).to(x.dtype)  # padded tokens hold zeros (attention ignores them anyway)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            if mask is not None:
                mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = self.forward_features(x, mask)
        if self.pooling == "cls":
            return self.classification_head(tokens[:, 0])
        if mask is not None:
            mask = mask.to(torch.bool)
        if self.pooling == "max":
            if mask is not None:
                tokens = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            return self.classification_head(tokens.amax(dim=1))
        if mask is None:
            return self.classification_head(tokens.mean(dim=1))
        m = mask.to(tokens.dtype).unsqueeze(-1)
        return self.classification_head((tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0))
