"""Multi-head self-attention modules behind one registry.

Every registered module has the same constructor and call signature::

    attn = build_attention(name, hidden_size=C, num_heads=h, qkv_bias=False, dropout_rate=0.0)
    y = attn(x, mask)      # x: (B, N, C) -> y: (B, N, C); mask: optional bool (B, N), True = real token
    y = attn(x, mask, grid_shape)  # grid_shape: optional token grid, e.g. [14, 14] or [8, 8, 4]

``grid_shape`` tells the types that need the spatial layout (``window``, ``xca``'s local patch
interaction; :mod:`monai_ext.networks.efficient_attention`) how the last ``prod(grid_shape)`` tokens lie
on the grid (row-major); leading extra tokens (a class token) are not on it. All other types ignore it.

``mask`` is a key-padding mask: padded tokens (``False``) contribute nothing to the output of
real tokens -- not as keys/values and not to any statistic computed over the sequence. The
outputs at padded positions are set to zero.

Registered types:

- ``softmax``: exact scaled dot-product attention (``torch.nn.functional.scaled_dot_product_attention``).
- ``softmax_free``: softmax-free attention with *sequence normalization* (Khader et al.,
  "Compute-Efficient Medical Image Classification with Softmax-Free Transformers and Sequence
  Normalization", Sec. 2.1). Q, K and V are each normalized over the token axis, per sample and
  per feature, to zero mean and unit variance, then scaled and shifted with learnable per-feature
  ``gamma``/``beta`` (separate for Q, K, V). No softmax: ``K^T V`` (``d x d`` per head) is computed
  first, then ``Q (K^T V)``, scaled by ``1/N`` (``N`` = number of real tokens). Linear in ``N``.
- ``sima``: SimA (Koohpayegani & Pirsiavash, WACV 2024): Q and K L1-normalized over the token axis
  per channel and head; no softmax, no scale; ``(Q K^T) V`` or ``Q (K^T V)``, whichever is cheaper
  (``N <= d`` or not).

New types are added with :func:`register_attention`; the efficient-attention zoo (``linformer``,
``performer``, ``fastformer``, ``xca``, ``window``) lives in :mod:`monai_ext.networks.efficient_attention`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, List, Optional  # typing.Optional/List: TorchScript of older torch versions

import torch
import torch.nn.functional as F
from torch import nn

from .sfn_kernel import _sfn_fold_graph, _SoftmaxFreeFold, sequence_norm

__all__ = [
    "ATTENTION_REGISTRY",
    "register_attention",
    "build_attention",
    "MultiHeadAttentionBase",
    "SoftmaxAttention",
    "SoftmaxFreeAttention",
    "SimAAttention",
    "sequence_norm",
    "block_attention_kwargs",
]

logger = logging.getLogger(__name__)

#: attention name -> module class
ATTENTION_REGISTRY: dict[str, type[nn.Module]] = {}


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding an attention module to :data:`ATTENTION_REGISTRY` under ``name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ATTENTION_REGISTRY and ATTENTION_REGISTRY[name] is not cls:
            raise ValueError(f"attention type {name!r} is already registered ({ATTENTION_REGISTRY[name].__name__})")
        ATTENTION_REGISTRY[name] = cls
        cls.attention_name = name
        return cls

    return deco


def check_attention_name(name: str) -> str:
    if name not in ATTENTION_REGISTRY:
        raise ValueError(f"unknown attention {name!r}; registered attention types: {sorted(ATTENTION_REGISTRY)}")
    return name


def build_attention(name: str, **kwargs) -> nn.Module:
    """Instantiate the registered attention ``name`` (ValueError listing the names if unknown)."""
    return ATTENTION_REGISTRY[check_attention_name(name)](**kwargs)


def block_attention_kwargs(name: str, block_index: int, num_tokens: int, grid_shape: Optional[List[int]],
                           user_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Keyword arguments of the attention in block ``block_index`` of a network whose blocks see
    ``num_tokens`` tokens (``grid_shape``: their grid, None if they do not form one).

    A type may define ``block_defaults(block_index, num_tokens, grid_shape) -> dict`` (e.g. ``window``
    shifts every second block, ``linformer`` sizes its projection to ``num_tokens``); ``user_kwargs``
    override those defaults. Types without it get ``user_kwargs`` only.
    """
    cls = ATTENTION_REGISTRY[check_attention_name(name)]
    hook = getattr(cls, "block_defaults", None)
    defaults = hook(block_index, num_tokens, grid_shape) if hook is not None else {}
    return {**defaults, **dict(user_kwargs or {})}


def _check_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    if mask is not None and (mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[1]):
        raise ValueError("mask must be (B, N) bool matching the tokens (B, N, C)")


class MultiHeadAttentionBase(nn.Module):
    """Shared projections of all attention types: ``qkv`` (C -> 3 * h * d) and ``out_proj`` (h * d -> C).

    Subclasses implement :meth:`attend` on per-head tensors. Parameter names are the same for every
    type, so weights transfer between types (see :func:`monai_ext.networks.vit.transfer_weights`).

    Args:
        hidden_size: C, token dimension.
        num_heads: h.
        dropout_rate: dropout on the output projection (and on attention weights where they exist).
        qkv_bias: bias in the qkv projection.
        dim_head: d, per-head dimension; default ``C // h``.
    """

    attention_name = "base"

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        dim_head: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}")
        if dim_head is None:
            if hidden_size % num_heads != 0:
                raise ValueError(
                    f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}); "
                    f"choose num_heads among the divisors of {hidden_size} or set dim_head"
                )
            dim_head = hidden_size // num_heads
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.inner_dim = num_heads * dim_head
        self.dropout_rate = dropout_rate
        self.qkv = nn.Linear(hidden_size, 3 * self.inner_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(self.inner_dim, hidden_size)
        self.drop_output = nn.Dropout(dropout_rate)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.dim_head).transpose(1, 2)  # (B, h, N, d)

    def _merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, self.inner_dim)

    def project(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]):
        """Hook on the concatenated ``(B, N, h*d)`` q, k, v before the head split (identity here)."""
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``(B, h, N, d)`` x3 -> ``(B, h, N, d)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                grid_shape: Optional[List[int]] = None) -> torch.Tensor:
        """
        Args:
            x: ``(B, N, C)`` tokens.
            mask: optional ``(B, N)`` bool, True for real tokens, False for padding.
            grid_shape: optional token grid (ignored by the types in this module).
        Returns:
            ``(B, N, C)``; zero at padded positions.
        """
        _check_mask(x, mask)
        qkv = self.qkv(x)
        c = self.inner_dim
        q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
        q, k, v = self.project(q, k, v, mask)
        out = self.attend(self._split_heads(q), self._split_heads(k), self._split_heads(v), mask)
        out = self.drop_output(self.out_proj(self._merge_heads(out)))
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out


@register_attention("softmax")
class SoftmaxAttention(MultiHeadAttentionBase):
    """Exact ``softmax(Q K^T / sqrt(d)) V`` through PyTorch's fused SDPA kernels."""

    def attend(self, q, k, v, mask: Optional[torch.Tensor]):
        attn_mask: Optional[torch.Tensor] = None
        if mask is not None:
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): keys only
        p = self.dropout_rate if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)


@register_attention("softmax_free")
class SoftmaxFreeAttention(MultiHeadAttentionBase):
    """Softmax-free attention with sequence normalization (linear in ``N``), computed through a fold.

    The formula: ``Q~ = gamma_q * SeqNorm(Q) + beta_q`` (likewise K, V, each with its own ``(h*d,)``
    parameters), per head ``out = Q~ (K~^T V~) / N``, then the output projection. Padded tokens are
    left out of the statistics and of ``K~^T V~``; ``N`` counts real tokens only.

    How it is computed: no normalized tensor is materialized. With per-feature token statistics
    ``mu``, ``sigma`` and ``a = gamma / sigma``, ``K~^T V~ = diag(a_k) G diag(a_v) + N beta_k beta_v^T``
    with ``G = (K - mu_k)^T (V - mu_v)`` (the cross terms vanish: centred columns sum to zero), and
    ``Q~ M W_o^T = q (diag(a_q) M W_o^T) + (beta_q - a_q mu_q) M W_o^T``: the per-head ``d x d``
    product is folded into the output projection. A layer is thus one ``G`` product, one product
    with the (per-sample) folded output weight, and per-feature statistics. The backward is written
    out by hand (:class:`_SoftmaxFreeFold`): it keeps only the qkv projection's output, so training
    memory is that of plain linear attention. Under ``torch.autocast`` the statistics and products are
    accumulated in fp32. TorchScript and tracing (ONNX export) use the same fold as a plain graph
    (:func:`_sfn_fold_graph`). The unfolded formula is :func:`_softmax_free_reference` (tests).
    Parameters and state dict are those of the unfolded implementation.

    Args:
        eps: variance epsilon of the sequence normalization.
        compile_backend: ``torch.compile`` backend for the fold (e.g. ``"inductor"``), or None (default):
            eager. Compiled, the fold runs as the plain graph (:func:`_sfn_fold_graph`) with autograd.
            Measured on the shared 2-core CPU, one thread, inductor: at 64 tokens (batch 16, C 192) the
            attention forward+backward 30 -> 17 ms and a 4-layer ViT training step 366 -> 327 ms (the
            eager fold's ~50 small ops dominate there); at 16384 tokens no gain (455 vs 450 ms). Compiling
            costs 20-60 s here and recompiles for every new input shape. Off by default.
        (others as :class:`MultiHeadAttentionBase`)
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None, eps: float = 1e-5, compile_backend: Optional[str] = None) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        self.eps = eps
        self.compile_backend = compile_backend
        self.q_gamma = nn.Parameter(torch.ones(self.inner_dim))
        self.q_beta = nn.Parameter(torch.zeros(self.inner_dim))
        self.k_gamma = nn.Parameter(torch.ones(self.inner_dim))
        self.k_beta = nn.Parameter(torch.zeros(self.inner_dim))
        self.v_gamma = nn.Parameter(torch.ones(self.inner_dim))
        self.v_beta = nn.Parameter(torch.zeros(self.inner_dim))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                grid_shape: Optional[List[int]] = None) -> torch.Tensor:
        """``(B, N, C)`` tokens, optional ``(B, N)`` bool mask -> ``(B, N, C)``, zero at padded positions
        (``grid_shape`` is ignored)."""
        _check_mask(x, mask)
        qkv = self.qkv(x)
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            out = _sfn_fold_graph(qkv, mask, [self.q_gamma, self.k_gamma, self.v_gamma],
                                  [self.q_beta, self.k_beta, self.v_beta], self.out_proj.weight, self.out_proj.bias,
                                  self.num_heads, self.eps)
        else:
            out = self._fold(qkv, mask)
        out = self.drop_output(out)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out

    @torch.jit.unused
    def _fold(self, qkv: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.compile_backend is not None:
            return _compiled_fold_graph(self.compile_backend)(
                qkv, mask, [self.q_gamma, self.k_gamma, self.v_gamma], [self.q_beta, self.k_beta, self.v_beta],
                self.out_proj.weight, self.out_proj.bias, self.num_heads, self.eps)
        gammas = torch.cat([self.q_gamma, self.k_gamma, self.v_gamma])
        betas = torch.cat([self.q_beta, self.k_beta, self.v_beta])
        return _SoftmaxFreeFold.apply(qkv, mask, gammas, betas, self.out_proj.weight, self.out_proj.bias,
                                      self.num_heads, self.eps)


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _compiled_fold_graph(backend: str) -> Callable[..., torch.Tensor]:
    """:func:`_sfn_fold_graph` through ``torch.compile`` with ``backend`` (compiled once per backend)."""
    if backend not in _COMPILED:
        _COMPILED[backend] = torch.compile(_sfn_fold_graph, backend=backend)
    return _COMPILED[backend]


def _softmax_free_reference(attn: SoftmaxFreeAttention, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                            grid_shape: Optional[List[int]] = None) -> torch.Tensor:
    """The unfolded formula (the implementation before the fold; the tests' reference): normalized
    ``Q~``, ``K~``, ``V~`` materialized, padded tokens zeroed in ``K~`` and ``V~``, ``Q~ (K~^T V~) / N``."""
    _check_mask(x, mask)
    c = attn.inner_dim
    qkv = attn.qkv(x)
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    q = sequence_norm(q, mask, attn.eps) * attn.q_gamma + attn.q_beta
    k = sequence_norm(k, mask, attn.eps) * attn.k_gamma + attn.k_beta
    v = sequence_norm(v, mask, attn.eps) * attn.v_gamma + attn.v_beta
    if mask is not None:
        m = mask.unsqueeze(-1).to(k.dtype)
        k = k * m
        v = v * m
    q, k, v = attn._split_heads(q), attn._split_heads(k), attn._split_heads(v)
    kv = torch.matmul(k.transpose(-2, -1), v)  # (B, h, d, d)
    if mask is None:
        kv = kv / q.shape[2]
    else:
        kv = kv / mask.sum(dim=1).to(q.dtype).clamp_min(1.0).view(-1, 1, 1, 1)
    out = attn.drop_output(attn.out_proj(attn._merge_heads(torch.matmul(q, kv))))
    if mask is not None:
        out = out * mask.unsqueeze(-1).to(out.dtype)
    return out


@register_attention("sima")
class SimAAttention(MultiHeadAttentionBase):
    """SimA: ``Q^ = Q / ||Q||_1`` and ``K^ = K / ||K||_1`` with the L1 norm over tokens, per channel and
    head; ``out = Q^ K^^T V`` with the matmul order picked by ``N`` vs ``d`` (no softmax, no scale).

    Args:
        eps: floor of the L1 norm.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        self.eps = eps

    def attend(self, q, k, v, mask: Optional[torch.Tensor]):
        if mask is not None:
            m = mask[:, None, :, None].to(q.dtype)  # (B, 1, N, 1)
            q = q * m
            k = k * m
        q = q / q.abs().sum(dim=2, keepdim=True).clamp_min(self.eps)
        k = k / k.abs().sum(dim=2, keepdim=True).clamp_min(self.eps)
        if q.shape[2] <= q.shape[3]:
            return torch.matmul(torch.matmul(q, k.transpose(-2, -1)), v)
        return torch.matmul(q, torch.matmul(k.transpose(-2, -1), v))
