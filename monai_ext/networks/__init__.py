"""Networks: one attention registry, one ViT and one UNETR that take any registered attention."""

from .apf_unetr import APFUNETR
from .attention import (
    ATTENTION_REGISTRY,
    MultiHeadAttentionBase,
    SimAAttention,
    SoftmaxAttention,
    SoftmaxFreeAttention,
    build_attention,
    register_attention,
    sequence_norm,
)
from .unetr import UNETR
from .vit import VIT_PRESETS, TransferReport, TransformerBlock, ViT, transfer_weights, vit_preset

__all__ = [
    "ATTENTION_REGISTRY",
    "MultiHeadAttentionBase",
    "SimAAttention",
    "SoftmaxAttention",
    "SoftmaxFreeAttention",
    "build_attention",
    "register_attention",
    "sequence_norm",
    "UNETR",
    "APFUNETR",
    "VIT_PRESETS",
    "TransferReport",
    "TransformerBlock",
    "ViT",
    "transfer_weights",
    "vit_preset",
]
