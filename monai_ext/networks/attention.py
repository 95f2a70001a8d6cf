"""Multi-head self-attention modules behind one registry.

Every registered module has the same constructor and call signature::

    attn = build_attention(name, hidden_size=C, num_heads=h, qkv_bias=False, dropout_rate=0.0)
    y = attn(x, mask)      # x: (B, N, C) -> y: (B, N, C); mask: optional bool (B, N), True = real token

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

New types are added with :func:`register_attention`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import List, Optional  # typing.List: TorchScript of older torch versions

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = [
    "ATTENTION_REGISTRY",
    "register_attention",
    "build_attention",
    "MultiHeadAttentionBase",
    "SoftmaxAttention",
    "SoftmaxFreeAttention",
    "SimAAttention",
    "sequence_norm",
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

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: ``(B, N, C)`` tokens.
            mask: optional ``(B, N)`` bool, True for real tokens, False for padding.
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


def sequence_norm(x: torch.Tensor, mask: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """Normalize ``(B, N, C)`` over the token axis, per sample and feature: zero mean, unit variance.

    Statistics use real tokens only (``mask``: ``(B, N)`` bool); padded positions come out as zero.
    The variance is the biased one (as in instance/batch normalization).
    """
    if mask is None:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + eps)
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    n = m.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=1, keepdim=True) / n
    centered = (x - mean) * m
    var = (centered * centered).sum(dim=1, keepdim=True) / n
    return centered * torch.rsqrt(var + eps)


def _fold_m(a_k: torch.Tensor, a_v: torch.Tensor, g: torch.Tensor, cnt: Optional[torch.Tensor], b_k: torch.Tensor,
            b_v: torch.Tensor, tokens: int) -> torch.Tensor:
    """``M = K~^T V~ / N`` per head, ``(B, h, d, d)``, from the centred ``g = sum_n (k_n - mu_k)^T (v_n - mu_v)``
    (real tokens), the scales ``a = gamma / sigma`` (``(B, C)``) and shifts ``beta`` (``(C,)``) of k and v:
    ``K~^T V~ = diag(a_k) G diag(a_v) + N beta_k beta_v^T`` (the cross terms vanish: centred columns sum
    to zero). ``cnt``: ``(B, 1)`` real tokens per sample, or None when all ``tokens`` are real."""
    bsz, h, d, _ = g.shape
    a_k4 = a_k.reshape(bsz, h, d, 1)
    a_v4 = a_v.reshape(bsz, h, 1, d)
    bb = b_k.reshape(1, h, d, 1) * b_v.reshape(1, h, 1, d)
    if cnt is None:
        return a_k4 * g * a_v4 / tokens + bb
    n4 = cnt.reshape(bsz, 1, 1, 1)
    return (a_k4 * g * a_v4 + n4 * bb) / n4.clamp_min(1.0)


def _fold_into_output(tokens: int, hidden: int) -> bool:
    """Whether ``M`` is folded into the output projection (``W' = block-diag(M) W_o^T``, costs ``2 C d hidden``
    per sample) rather than applied per head (``Q~ M``, costs ``2 N C d``): when ``N >= hidden``."""
    return tokens >= hidden


def _sfn_fold_graph(qkv: torch.Tensor, mask: Optional[torch.Tensor], gammas: List[torch.Tensor],
                    betas: List[torch.Tensor], w_o: torch.Tensor, b_o: torch.Tensor, num_heads: int,
                    eps: float) -> torch.Tensor:
    """The folded softmax-free attention as a plain autograd graph (TorchScript, tracing / ONNX export).

    ``qkv``: ``(B, N, 3C)`` output of the qkv projection; returns the output projection's output
    ``(B, N, hidden)`` (rows of padded tokens are not zeroed here). Centred copies of q, k, v are
    materialized (simple, exact); the eager path (:class:`_SoftmaxFreeFold`) avoids them.
    """
    bsz, n, c3 = qkv.shape
    c = c3 // 3
    d = c // num_heads
    cnt: Optional[torch.Tensor] = None
    if mask is None:
        mean = qkv.mean(dim=1)
        xc = qkv - mean.unsqueeze(1)
        var = (xc * xc).mean(dim=1)
    else:
        mk = mask.unsqueeze(-1).to(qkv.dtype)
        cnt = mk.sum(dim=1)
        mean = (qkv * mk).sum(dim=1) / cnt.clamp_min(1.0)
        xc = (qkv - mean.unsqueeze(1)) * mk
        var = (xc * xc).sum(dim=1) / cnt.clamp_min(1.0)
    kc = xc[..., c : 2 * c].reshape(bsz, n, num_heads, d).transpose(1, 2)
    vc = xc[..., 2 * c :].reshape(bsz, n, num_heads, d).transpose(1, 2)
    g = torch.matmul(kc.transpose(-2, -1), vc)
    r = torch.rsqrt(var + eps)
    a_q, a_k, a_v = gammas[0] * r[:, :c], gammas[1] * r[:, c : 2 * c], gammas[2] * r[:, 2 * c :]
    m = _fold_m(a_k, a_v, g, cnt, betas[1], betas[2], n)
    q_t = xc[..., :c] * a_q.unsqueeze(1) + betas[0]  # Q~ = a_q (q - mu_q) + beta_q
    if _fold_into_output(n, w_o.shape[0]):
        wp = torch.matmul(m, w_o.t().reshape(num_heads, d, w_o.shape[0])).reshape(bsz, c, w_o.shape[0])
        return torch.baddbmm(b_o.unsqueeze(0).unsqueeze(0), q_t, wp)
    z = torch.matmul(q_t.reshape(bsz, n, num_heads, d).transpose(1, 2), m)
    return F.linear(z.transpose(1, 2).reshape(bsz, n, c), w_o, b_o)


#: elements per chunk when statistics are accumulated over token chunks (keeps temporaries small,
#: in cache and off the page-fault path of large fresh allocations)
_CHUNK_ELEMENTS = 1 << 21


class _SoftmaxFreeFold(torch.autograd.Function):
    """Folded softmax-free attention with a hand-written backward (see :class:`SoftmaxFreeAttention`).

    Saves only the qkv projection's output (a tensor the layer computes anyway, in its own dtype) and
    ``O(d^2)`` per-sample constants; no normalized or centred ``(N, C)`` tensor is kept for backward.
    Everything is computed in at least fp32, also under ``torch.autocast`` (sums over ``N`` overflow
    fp16 and lose precision in bf16); the output and the input gradient are returned in ``qkv``'s dtype.
    First derivatives only (a second backward raises).
    """

    @staticmethod
    def forward(ctx, qkv, mask, gammas, betas, w_o, b_o, num_heads: int, eps: float):  # type: ignore[override]
        ct = torch.promote_types(qkv.dtype, torch.float32)
        with _no_autocast(qkv.device):
            x, mk, cnt = _masked_input(qkv, mask, ct)
            bsz, n, c3 = x.shape
            c = c3 // 3
            d = c // num_heads
            hid = w_o.shape[0]
            ctx.param_dtypes = (gammas.dtype, betas.dtype, w_o.dtype, b_o.dtype)
            gammas, betas, w_o, b_o = (t.to(ct) for t in (gammas, betas, w_o, b_o))
            nc = cnt.clamp_min(1.0)
            mean = x.sum(dim=1) / nc
            var = torch.zeros_like(mean)
            g = x.new_zeros((bsz, num_heads, d, d))
            step = min(n, max(16, _CHUNK_ELEMENTS // (bsz * c3)))
            buf = x.new_empty((bsz, step, c3))  # one chunk buffer, reused: few ops, no page-faulting temporaries
            for s in range(0, n, step):  # exact centred statistics and K_c^T V_c, chunk by chunk
                xs = x[:, s : s + step]
                ln = xs.shape[1]
                xc = buf[:, :ln]
                if mk is None:
                    torch.sub(xs, mean.unsqueeze(1), out=xc)
                else:
                    torch.addcmul(xs, mk[:, s : s + step], mean.unsqueeze(1), value=-1.0, out=xc)
                kc = xc[..., c : 2 * c].reshape(bsz, ln, num_heads, d).transpose(1, 2)
                vc = xc[..., 2 * c :].reshape(bsz, ln, num_heads, d).transpose(1, 2)
                if bsz == 1:  # strided per-head views straight into BLAS (matmul would copy them)
                    g[0] += torch.bmm(kc[0].transpose(-2, -1), vc[0])
                else:
                    g += torch.matmul(kc.transpose(-2, -1), vc)
                var += xc.square_().sum(dim=1)
            var /= nc
            r = torch.rsqrt(var + eps)
            a = gammas * r
            m = _fold_m(a[:, c : 2 * c], a[:, 2 * c :], g, cnt, betas[c : 2 * c], betas[2 * c :], n)
            q = x[..., :c]
            c_q = betas[:c] - a[:, :c] * mean[:, :c]  # Q~ = a_q q + c_q on real tokens
            fold = _fold_into_output(n, hid)
            if fold:  # y = Q~ W' + b_o = q (a_q W') + (c_q W' + b_o), W' = block-diag(M) W_o^T
                wp = torch.matmul(m, w_o.t().reshape(num_heads, d, hid)).reshape(bsz, c, hid)
                w2 = a[:, :c].unsqueeze(-1) * wp
                bias = torch.matmul(c_q.unsqueeze(1), wp).squeeze(1) + b_o
                y = torch.baddbmm(bias.unsqueeze(1), q, w2)
            else:  # z = Q~ M per head, then the output projection
                wp = a[:, :c].reshape(bsz, num_heads, d, 1) * m  # diag(a_q) M
                y = F.linear(_per_head_z(q, c_q, m, wp, num_heads), w_o, b_o)
            if mk is not None:
                y.mul_(mk)
        ctx.save_for_backward(qkv, mask, betas, w_o, mean, r, a, g, m, wp, cnt)
        ctx.num_heads = num_heads
        ctx.fold = fold
        return y.to(qkv.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        qkv, mask, betas, w_o, mean, r, a, g, m, wp, cnt = ctx.saved_tensors
        h = ctx.num_heads
        ct = mean.dtype
        with _no_autocast(qkv.device):
            x, mk, _ = _masked_input(qkv, mask, ct)
            bsz, n, c3 = x.shape
            c = c3 // 3
            d = c // h
            hid = w_o.shape[0]
            nc = cnt.clamp_min(1.0)
            dy = dy.to(ct)
            if mk is not None:
                dy = dy * mk
            q, k, v = x[..., :c], x[..., c : 2 * c], x[..., 2 * c :]
            mu_q, mu_k, mu_v = mean[:, :c], mean[:, c : 2 * c], mean[:, 2 * c :]
            r_q, r_k, r_v = r[:, :c], r[:, c : 2 * c], r[:, 2 * c :]
            a_q, a_k, a_v = a[:, :c], a[:, c : 2 * c], a[:, 2 * c :]
            b_q = betas[:c]
            dqkv = torch.empty(bsz, n, c3, dtype=ct, device=x.device)
            dq = dqkv[..., :c]
            # output side: dm = Q~^T dZ per head, db_q = sum_n dQ~_n, dgraw_q = sum_n (q_n - mu_q) dQ~_n,
            # and dq <- a_q dQ~ (written into dq); Q~ = a_q (q - mu_q) + beta_q
            if ctx.fold:  # y = Q~ W' + b_o
                s = dy.sum(dim=1)  # (B, hidden)
                pc = torch.bmm(q.transpose(1, 2), dy) - mu_q.unsqueeze(-1) * s.unsqueeze(1)  # (q - mu_q)^T dy
                d_wp = a_q.unsqueeze(-1) * pc + b_q.view(1, c, 1) * s.unsqueeze(1)  # Q~^T dy
                db_q = torch.bmm(wp, s.unsqueeze(-1)).squeeze(-1)
                dgraw_q = (pc * wp).sum(dim=-1)
                torch.bmm(dy, (a_q.unsqueeze(-1) * wp).transpose(1, 2), out=dq)  # a_q dQ~ = dy (a_q W')^T
                wt = w_o.t().reshape(h, d, hid)
                d_wp4 = d_wp.reshape(bsz, h, d, hid)
                dm = torch.matmul(d_wp4, wt.transpose(-2, -1))  # (B, h, d, d)
                dw_o = torch.matmul(m.transpose(-2, -1), d_wp4).sum(0).reshape(c, hid).t()
                db_o = s.sum(0)
            else:  # z = Q~ M per head, y = z W_o^T + b_o
                c_q = b_q - a_q * mu_q
                z = _per_head_z(q, c_q, m, wp, h)
                dw_o = dy.reshape(-1, hid).t().mm(z.reshape(-1, c))
                db_o = dy.sum(dim=(0, 1))
                dz = torch.matmul(dy, w_o).reshape(bsz, n, h, d).transpose(1, 2)  # (B, h, N, d)
                s4 = dz.sum(dim=2, keepdim=True)  # (B, h, 1, d)
                qh = q.reshape(bsz, n, h, d).transpose(1, 2)
                pc = torch.matmul(qh.transpose(-2, -1), dz) - mu_q.reshape(bsz, h, d, 1) * s4
                dm = a_q.reshape(bsz, h, d, 1) * pc + b_q.reshape(1, h, d, 1) * s4
                db_q = torch.matmul(s4, m.transpose(-2, -1)).reshape(bsz, c)
                dgraw_q = (pc * m).sum(dim=-1).reshape(bsz, c)
                dq.copy_(torch.matmul(dz, wp.transpose(-2, -1)).transpose(1, 2).reshape(bsz, n, c))
            # dq = a_q dQ~ - (a_q / N) sum dQ~ - (a_q r_q^2 / N) (q - mu_q) sum((q - mu_q) dQ~)
            coef_q = -(a_q * r_q * r_q / nc) * dgraw_q
            const_q = -(a_q / nc) * db_q - coef_q * mu_q
            if mk is None:
                dq.addcmul_(q, coef_q.unsqueeze(1)).add_(const_q.unsqueeze(1))
            else:
                dq.addcmul_(q, coef_q.unsqueeze(1)).addcmul_(mk, const_q.unsqueeze(1))
            # through M = (diag(a_k) G diag(a_v) + N beta_k beta_v^T) / N
            dt = dm / nc.reshape(bsz, 1, 1, 1)
            a_k4, a_v4 = a_k.reshape(bsz, h, d, 1), a_v.reshape(bsz, h, 1, d)
            dg = a_k4 * dt * a_v4
            da_k = (dt * g * a_v4).sum(-1).reshape(bsz, c)
            da_v = (dt * g * a_k4).sum(-2).reshape(bsz, c)
            n4 = cnt.reshape(bsz, 1, 1)
            db_k = (n4 * torch.matmul(dt, betas[2 * c :].reshape(1, h, d, 1)).squeeze(-1)).sum(0).reshape(c)
            db_v = (n4 * torch.matmul(dt.transpose(-2, -1), betas[c : 2 * c].reshape(1, h, d, 1)).squeeze(-1)
                    ).sum(0).reshape(c)
            coef_k = -(a_k * r_k * r_k / nc) * da_k
            coef_v = -(a_v * r_v * r_v / nc) * da_v
            # dk = (v - mu_v) dG^T + coef_k (k - mu_k); dv = (k - mu_k) dG + coef_v (v - mu_v)  (real tokens)
            mu_k4, mu_v4 = mu_k.reshape(bsz, h, 1, d), mu_v.reshape(bsz, h, 1, d)
            const_k = -torch.matmul(mu_v4, dg.transpose(-2, -1)).reshape(bsz, c) - coef_k * mu_k
            const_v = -torch.matmul(mu_k4, dg).reshape(bsz, c) - coef_v * mu_v
            zero = torch.zeros(1, 1, 1, dtype=ct, device=x.device)
            for b in range(bsz):  # per-head products written in place into dqkv through (h, N, d) views
                vh = v[b].view(n, h, d).transpose(0, 1)
                kh = k[b].view(n, h, d).transpose(0, 1)
                ck = const_k[b].view(h, 1, d) if mk is None else zero
                cv = const_v[b].view(h, 1, d) if mk is None else zero
                torch.baddbmm(ck, vh, dg[b].transpose(-2, -1), out=dqkv[b, :, c : 2 * c].view(n, h, d).transpose(0, 1))
                torch.baddbmm(cv, kh, dg[b], out=dqkv[b, :, 2 * c :].view(n, h, d).transpose(0, 1))
            dk, dv = dqkv[..., c : 2 * c], dqkv[..., 2 * c :]
            dk.addcmul_(k, coef_k.unsqueeze(1))
            dv.addcmul_(v, coef_v.unsqueeze(1))
            if mk is not None:
                dk.addcmul_(mk, const_k.unsqueeze(1))
                dv.addcmul_(mk, const_v.unsqueeze(1))
            d_gammas = torch.cat([(r_q * dgraw_q).sum(0), (r_k * da_k).sum(0), (r_v * da_v).sum(0)])
            d_betas = torch.cat([db_q.sum(0), db_k, db_v])
        pg, pb, pw, pbo = ctx.param_dtypes
        return dqkv.to(qkv.dtype), None, d_gammas.to(pg), d_betas.to(pb), dw_o.to(pw), db_o.to(pbo), None, None


def _per_head_z(q: torch.Tensor, c_q: torch.Tensor, m: torch.Tensor, m2: torch.Tensor, num_heads: int
                ) -> torch.Tensor:
    """``Q~ M`` per head as ``(B, N, C)``: ``q (diag(a_q) M) + c_q M`` with ``m2 = diag(a_q) M``."""
    bsz, n, c = q.shape
    d = c // num_heads
    bias = torch.matmul(c_q.reshape(bsz, num_heads, 1, d), m)  # (B, h, 1, d)
    z = torch.matmul(q.reshape(bsz, n, num_heads, d).transpose(1, 2), m2) + bias
    return z.transpose(1, 2).reshape(bsz, n, c)


def _no_autocast(device: torch.device):
    """Context that turns ``torch.autocast`` off on ``device`` (a no-op where autocast does not exist)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _masked_input(qkv: torch.Tensor, mask: Optional[torch.Tensor], ct: torch.dtype):
    """``qkv`` in the compute dtype with padded tokens zeroed, the ``(B, N, 1)`` mask (or None) and the
    ``(B, 1)`` count of real tokens."""
    x = qkv.to(ct)
    if mask is None:
        return x, None, torch.full((qkv.shape[0], 1), float(qkv.shape[1]), dtype=ct, device=qkv.device)
    mk = mask.unsqueeze(-1).to(ct)
    return x * mk, mk, mk.sum(dim=1)


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

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N, C)`` tokens, optional ``(B, N)`` bool mask -> ``(B, N, C)``, zero at padded positions."""
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


def _softmax_free_reference(attn: SoftmaxFreeAttention, x: torch.Tensor,
                            mask: Optional[torch.Tensor] = None) -> torch.Tensor:
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
