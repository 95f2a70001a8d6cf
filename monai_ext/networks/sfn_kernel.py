"""The softmax-free attention kernel (Khader et al., Sec. 2.1): sequence normalization and its algebraic fold.

:func:`sequence_norm` is the normalization itself (the reference). The layer never materializes it: with per-feature
token statistics ``mu``, ``sigma`` and ``a = gamma / sigma``, ``K~^T V~ = diag(a_k) (K^T V - N mu_k mu_v^T) diag(a_v)
+ N beta_k beta_v^T`` and ``Q~ M = Q (diag(a_q) M) + (beta_q - a_q mu_q)^T M``, so a layer costs one ``K^T V``, one
``Q M'`` and the statistics (:func:`_sfn_fold_graph`, plain autograd graph for TorchScript / ONNX /
``torch.compile``; :class:`_SoftmaxFreeFold`, the same with a hand-written backward that keeps only the qkv
projection's output). Used by :class:`monai_ext.networks.attention.SoftmaxFreeAttention`.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional  # typing.List: TorchScript of older torch versions

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["sequence_norm"]


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
