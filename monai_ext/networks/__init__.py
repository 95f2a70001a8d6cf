"""Networks: one attention registry (incl. the efficient-attention zoo), one ViT and one UNETR that take any
registered attention."""

from .apf_unetr import APFUNETR
from .attention import (
    ATTENTION_REGISTRY,
    MultiHeadAttentionBase,
    SimAAttention,
    SoftmaxAttention,
    SoftmaxFreeAttention,
    block_attention_kwargs,
    build_attention,
    register_attention,
    sequence_norm,
)
from .efficient_attention import (
    FastformerAttention,
    LinformerAttention,
    PerformerAttention,
    WindowAttention,
    XCAttention,
)
from .pyramid import PYRAMID_PRESETS, PyramidTransformer, pyramid_preset
from .unetr import UNETR
from .vit import VIT_PRESETS, TransferReport, TransformerBlock, ViT, transfer_weights, vit_preset

__all__ = [
    "ATTENTION_REGISTRY",
    "MultiHeadAttentionBase",
    "block_attention_kwargs",
    "FastformerAttention",
    "LinformerAttention",
    "PerformerAttention",
    "WindowAttention",
    "XCAttention",
    "SimAAttention",
    "SoftmaxAttention",
    "SoftmaxFreeAttention",
    "build_attention",
    "register_attention",
    "sequence_norm",
    "PYRAMID_PRESETS",
    "PyramidTransformer",
    "pyramid_preset",
    "UNETR",
    "APFUNETR",
    "VIT_PRESETS",
    "TransferReport",
    "TransformerBlock",
    "ViT",
    "transfer_weights",
    "vit_preset",
]
