"""The efficient-attention zoo of the efficient-transformers benchmark, in the attention registry.

Same constructor, call signature and padding-mask rule as :mod:`monai_ext.networks.attention`
(``attn(x (B, N, C), mask (B, N) bool or None, grid_shape or None) -> (B, N, C)``, padded tokens contribute
nothing and come out zero):

- ``linformer`` (Wang et al. 2020): keys and values projected along the token axis by learned
  ``(proj_len, max_len)`` matrices ``E``, ``F`` (the first ``N`` columns), ``softmax(Q (E K)^T / sqrt(d)) F V``.
- ``performer`` (Choromanski et al. 2021): FAVOR+ with positive orthogonal random features.
- ``fastformer`` (Wu et al. 2021): additive attention, global query and key vectors, linear in ``N``.
- ``xca`` (El-Nouby et al. 2021, XCiT): cross-covariance attention over channels with a learnable
  temperature per head, plus XCiT's local patch interaction (LPI) on the token grid.
- ``window`` (Liu et al. 2021, Swin): attention inside non-overlapping windows of the token grid, shifted
  by half a window in every second block, with a learned relative position bias.

``window`` and ``xca`` (with LPI) need the token grid: the last ``prod(grid_shape)`` tokens lie on it in
row-major order; leading extra tokens (a class token) attend globally (``window``) or skip the LPI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttentionBase, _check_mask, register_attention

__all__ = ["LinformerAttention", "PerformerAttention", "FastformerAttention", "XCAttention", "WindowAttention",
           "LocalPatchInteraction", "orthogonal_random_features"]


def _grid_split(n: int, grid_shape: Optional[List[int]], who: str) -> tuple[int, List[int]]:
    """Number of leading extra tokens and the grid; clear errors when the grid is missing or too large."""
    if grid_shape is None:
        raise ValueError(f"{who} needs the token grid (grid_shape), but none was given: the network's tokens do "
                         "not form a grid (e.g. APF-UNETR's quadtree leaves)")
    grid = [int(g) for g in grid_shape]
    m = math.prod(grid)
    if m > n or min(grid) < 1:
        raise ValueError(f"{who}: grid_shape={grid} holds {m} tokens but the input has {n}")
    return n - m, grid


def _masked_fill_min(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Scores with dropped keys at the dtype's minimum (finite: a row without any key stays NaN-free)."""
    return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)


@register_attention("linformer")
class LinformerAttention(MultiHeadAttentionBase):
    """``softmax(Q (E K)^T / sqrt(d)) (F V)`` per head, ``E``, ``F``: learned ``(proj_len, max_len)``.

    ``N <= max_len`` tokens use the first ``N`` columns; padded tokens are zeroed in ``K`` and ``V`` before
    the projection, so they add nothing. Cost ``O(N k d)``.

    Args:
        max_len: longest token sequence (networks set it to their token count, see ``block_defaults``).
        proj_len: ``k``, the projected length.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None, max_len: int = 4096, proj_len: int = 64) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        if max_len < 1 or proj_len < 1:
            raise ValueError(f"linformer max_len and proj_len must be >= 1, got {max_len}, {proj_len}")
        self.max_len = int(max_len)
        self.proj_len = int(proj_len)
        bound = 1.0 / math.sqrt(proj_len)
        self.proj_k = nn.Parameter(torch.empty(proj_len, max_len).uniform_(-bound, bound))
        self.proj_v = nn.Parameter(torch.empty(proj_len, max_len).uniform_(-bound, bound))
        self.drop_attn = nn.Dropout(dropout_rate)

    @staticmethod
    def block_defaults(block_index: int, num_tokens: int, grid_shape: Optional[List[int]]) -> dict[str, Any]:
        return {"max_len": int(num_tokens)}

    def attend(self, q, k, v, mask: Optional[torch.Tensor]):
        n = k.shape[2]
        if n > self.max_len:
            raise ValueError(f"linformer: {n} tokens exceed max_len={self.max_len} of its length projections; "
                             f"build it with max_len >= {n} (attention_kwargs)")
        if mask is not None:
            m = mask[:, None, :, None].to(k.dtype)
            k, v = k * m, v * m
        kp = torch.matmul(self.proj_k[:, :n], k)  # (B, h, k, d)
        vp = torch.matmul(self.proj_v[:, :n], v)
        attn = torch.softmax(torch.matmul(q, kp.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
        return torch.matmul(self.drop_attn(attn), vp)


def orthogonal_random_features(num_features: int, dim: int, generator: Optional[torch.Generator] = None,
                               ) -> torch.Tensor:
    """``(num_features, dim)`` Gaussian directions, orthogonal within each block of ``dim`` rows (QR of a
    Gaussian matrix), each row scaled by the norm of an independent Gaussian vector (FAVOR+)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


@register_attention("performer")
class PerformerAttention(MultiHeadAttentionBase):
    """FAVOR+: ``D^-1 phi(Q) (phi(K)^T V)``, ``D = diag(phi(Q) phi(K)^T 1)``, positive random features

    ``phi(x) = (exp(w_j . x' - |x'|^2 / 2 - c) + eps) / sqrt(m)``, ``x' = x / d^(1/4)``, ``w_j`` the rows of
    :func:`orthogonal_random_features` (``projection``, a buffer saved with the weights). The stabilizer
    ``c`` is the row maximum of ``w . q'`` for queries and the maximum over all real tokens and features of
    ``w . k'`` for keys (it cancels in the ratio but for ``eps``). Padded keys have ``phi = 0``. Cost
    ``O(N m d)``.

    Args:
        num_features: ``m``; default ``int(d ln d)`` (the Performer paper).
        redraw_interval: redraw the features every this many training forward passes; None or 0: never.
            In eval mode the features never change. The features are a buffer (saved and restored with the
            weights); the pass counter is not, so a resumed run counts its interval afresh.
        feature_eps: ``eps`` above (1e-4 as the reference implementation).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None, num_features: Optional[int] = None,
                 redraw_interval: Optional[int] = None, feature_eps: float = 1e-4) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        d = self.dim_head
        self.num_features = int(num_features) if num_features else max(1, int(d * math.log(max(d, 2))))
        if redraw_interval is not None and redraw_interval < 0:
            raise ValueError(f"performer redraw_interval must be >= 0 or None, got {redraw_interval}")
        self.redraw_interval = int(redraw_interval or 0)
        self.feature_eps = float(feature_eps)
        self.register_buffer("projection", orthogonal_random_features(self.num_features, d))
        self.steps_since_redraw = 0

    def redraw(self) -> None:
        """New random features (same shape, same device)."""
        w = orthogonal_random_features(self.num_features, self.dim_head)
        self.projection.copy_(w.to(self.projection))
        self.steps_since_redraw = 0

    def features(self, x: torch.Tensor, is_query: bool, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, h, N, d)`` -> ``(B, h, N, m)`` positive features (zero at padded keys)."""
        x = x * x.shape[-1] ** -0.25
        proj = torch.matmul(x, self.projection.to(x.dtype).T)
        diag = 0.5 * (x * x).sum(dim=-1, keepdim=True)
        if is_query:
            stab = proj.amax(dim=-1, keepdim=True)
        else:
            real = proj if mask is None else proj.masked_fill(~mask[:, None, :, None], float("-inf"))
            stab = real.amax(dim=(-1, -2), keepdim=True)
            stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))
        phi = (torch.exp(proj - diag - stab.detach()) + self.feature_eps) * self.num_features ** -0.5
        if mask is not None and not is_query:
            phi = phi * mask[:, None, :, None].to(phi.dtype)
        return phi

    def attend(self, q, k, v, mask: Optional[torch.Tensor]):
        if self.training and self.redraw_interval > 0:
            if self.steps_since_redraw >= self.redraw_interval:
                with torch.no_grad():
                    self.redraw()
            self.steps_since_redraw += 1
        qf, kf = self.features(q, True, mask), self.features(k, False, mask)
        kv = torch.matmul(kf.transpose(-2, -1), v)  # (B, h, m, d)
        denom = torch.matmul(qf, kf.sum(dim=2).unsqueeze(-1))  # (B, h, N, 1)
        return torch.matmul(qf, kv) / denom.clamp_min(torch.finfo(denom.dtype).tiny)


@register_attention("fastformer")
class FastformerAttention(MultiHeadAttentionBase):
    """Additive attention, per head: ``alpha = softmax_i(w_q . q_i / sqrt(d))``, ``q* = sum alpha_i q_i``,
    ``p_i = q* * k_i``, ``beta = softmax_i(w_k . p_i / sqrt(d))``, ``k* = sum beta_i p_i``,
    ``out_i = q_i + (k* * v_i) W_t + b_t`` (``W_t``: per-head ``d x d`` transform), then the output
    projection. Softmaxes over real tokens only. Cost ``O(N d)`` per head.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        h, d = self.num_heads, self.dim_head
        self.w_q = nn.Parameter(torch.randn(h, d) * d**-0.5)
        self.w_k = nn.Parameter(torch.randn(h, d) * d**-0.5)
        self.transform_weight = nn.Parameter(torch.randn(h, d, d) * d**-0.5)
        self.transform_bias = nn.Parameter(torch.zeros(h, 1, d))
        self.drop_attn = nn.Dropout(dropout_rate)

    def _pool(self, x: torch.Tensor, w: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, h, N, d)`` -> ``(B, h, 1, d)``: softmax-weighted sum over the real tokens."""
        scores = (x * w[None, :, None, :]).sum(-1) * x.shape[-1] ** -0.5  # (B, h, N)
        if mask is not None:
            scores = _masked_fill_min(scores, mask[:, None, :])
        a = self.drop_attn(torch.softmax(scores, dim=-1))
        return torch.matmul(a.unsqueeze(2), x)

    def attend(self, q, k, v, mask: Optional[torch.Tensor]):
        g_q = self._pool(q, self.w_q, mask)
        p = g_q * k
        g_k = self._pool(p, self.w_k, mask)
        return q + torch.matmul(g_k * v, self.transform_weight) + self.transform_bias


class LocalPatchInteraction(nn.Module):
    """XCiT's LPI: depthwise conv -> GELU -> BatchNorm -> depthwise conv on the token grid.

    ``(B, M, C)`` grid tokens (row-major), ``grid`` (2 or 3 sizes), ``mask`` ``(B, M)`` -> ``(B, M, C)``.
    Padded tokens are zero before each conv; BatchNorm statistics use real tokens only.
    """

    def __init__(self, dim: int, spatial_dims: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"LPI spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        self.conv1 = conv(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm1d(dim)
        self.conv2 = conv(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: List[int], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if len(grid) != self.spatial_dims:
            raise ValueError(f"LPI built for {self.spatial_dims}D grids got grid_shape={grid}")
        b, m, c = x.shape
        keep = None if mask is None else mask.reshape(b * m)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        y = self.act(self.conv1(x.transpose(1, 2).reshape([b, c] + grid)))
        flat = y.reshape(b, c, m).transpose(1, 2).reshape(b * m, c)
        if keep is None:
            flat = self.bn(flat)
        else:
            flat = flat.masked_scatter(keep.unsqueeze(-1), self.bn(flat[keep]))
            flat = flat * keep.unsqueeze(-1).to(flat.dtype)
        y = self.conv2(flat.reshape(b, m, c).transpose(1, 2).reshape([b, c] + grid))
        return y.reshape(b, c, m).transpose(1, 2)


@register_attention("xca")
class XCAttention(MultiHeadAttentionBase):
    """Cross-covariance attention: per head, ``q``, ``k`` L2-normalized over the (real) tokens,
    ``A = softmax(q^T k * tau)`` (``d x d``, learnable temperature ``tau`` per head), ``out = v A^T``;
    then the output projection ``y``, and with ``lpi`` XCiT's local patch interaction ``y + LPI(y)`` on the
    grid tokens. Weights match ``timm.models.xcit.XCA`` (``proj`` is ``out_proj`` here). Cost ``O(N d^2)``.

    Args:
        lpi: add the local patch interaction (needs ``grid_shape``).
        spatial_dims: grid dimensionality of the LPI convolutions (networks set it from their grid).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None, lpi: bool = True, spatial_dims: int = 2) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.drop_attn = nn.Dropout(dropout_rate)
        self.needs_grid = bool(lpi)
        self.lpi = LocalPatchInteraction(hidden_size, spatial_dims) if lpi else None

    @staticmethod
    def block_defaults(block_index: int, num_tokens: int, grid_shape: Optional[List[int]]) -> dict[str, Any]:
        return {} if grid_shape is None else {"spatial_dims": len(grid_shape)}

    def attend(self, q, k, v, mask: Optional[torch.Tensor]):
        if mask is not None:
            m = mask[:, None, :, None].to(q.dtype)
            q, k = q * m, k * m
        q = F.normalize(q, dim=2)  # over tokens
        k = F.normalize(k, dim=2)
        attn = torch.softmax(torch.matmul(q.transpose(-2, -1), k) * self.temperature, dim=-1)  # (B, h, d, d)
        return torch.matmul(v, self.drop_attn(attn).transpose(-2, -1))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                grid_shape: Optional[List[int]] = None) -> torch.Tensor:
        if self.lpi is None:
            return super().forward(x, mask, grid_shape)
        n_extra, grid = _grid_split(x.shape[1], grid_shape, "xca's local patch interaction (lpi=True)")
        y = super().forward(x, mask, grid_shape)
        g = y[:, n_extra:]
        g = g + self.lpi(g, grid, None if mask is None else mask[:, n_extra:])
        out = torch.cat([y[:, :n_extra], g], dim=1)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out


def _windows(t: torch.Tensor, win: List[int]) -> torch.Tensor:
    """``(B, *G, C)`` -> ``(B * nW, prod(win), C)``, windows in row-major order."""
    b, c, dims = t.shape[0], t.shape[-1], len(win)
    shape = [b]
    for g, w in zip(t.shape[1:-1], win):
        shape += [g // w, w]
    t = t.reshape(shape + [c])
    perm = [0] + [1 + 2 * i for i in range(dims)] + [2 + 2 * i for i in range(dims)] + [1 + 2 * dims]
    return t.permute(perm).reshape(-1, math.prod(win), c)


def _unwindows(t: torch.Tensor, win: List[int], grid: List[int], b: int) -> torch.Tensor:
    """Inverse of :func:`_windows`: ``(B * nW, prod(win), C)`` -> ``(B, *G, C)``."""
    dims, c = len(win), t.shape[-1]
    t = t.reshape([b] + [g // w for g, w in zip(grid, win)] + list(win) + [c])
    perm = [0]
    for i in range(dims):
        perm += [1 + i, 1 + dims + i]
    return t.permute(perm + [1 + 2 * dims]).reshape([b] + grid + [c])


@register_attention("window")
class WindowAttention(MultiHeadAttentionBase):
    """Swin (shifted) window attention on the token grid.

    Every grid token attends the real tokens of its window (``window_size`` per dimension, at most the grid
    size; the grid is padded to a multiple of it with masked tokens) plus the leading extra tokens;
    ``softmax(q k^T / sqrt(d) + B) v`` with ``B`` a learned relative position bias (grid keys only). With
    ``shifted``, windows are offset by half a window (Swin's cyclic shift with its region mask: windows
    never wrap around the grid). Extra tokens attend all real tokens. Cost ``O(N w d)``, ``w`` tokens per
    window: linear in ``N`` at a fixed window.

    Args:
        window_size: int or one size per grid dimension.
        shifted: offset the windows (networks shift every second block, see ``block_defaults``).
        spatial_dims: grid dimensionality (sizes the bias table; networks set it from their grid).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 dim_head: Optional[int] = None, window_size: int | Sequence[int] = 7, shifted: bool = False,
                 spatial_dims: int = 2) -> None:
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        ws = [int(window_size)] * spatial_dims if isinstance(window_size, int) else [int(w) for w in window_size]
        if len(ws) != spatial_dims or min(ws) < 1:
            raise ValueError(f"window_size={window_size} must be positive, one size or {spatial_dims} sizes")
        self.window_size = ws
        self.shifted = bool(shifted)
        self.spatial_dims = spatial_dims
        self.needs_grid = True
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in ws), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.drop_attn = nn.Dropout(dropout_rate)

    @staticmethod
    def block_defaults(block_index: int, num_tokens: int, grid_shape: Optional[List[int]]) -> dict[str, Any]:
        out: dict[str, Any] = {"shifted": block_index % 2 == 1}
        if grid_shape is not None:
            out["spatial_dims"] = len(grid_shape)
        return out

    def geometry(self, grid: List[int]) -> tuple[List[int], List[int]]:
        """Effective window (capped at the grid) and shift per dimension for ``grid``."""
        win = [min(w, g) for w, g in zip(self.window_size, grid)]
        shift = [w // 2 if self.shifted and g > w else 0 for w, g in zip(win, grid)]
        return win, shift

    def relative_bias(self, win: List[int]) -> torch.Tensor:
        """``(h, prod(win), prod(win))`` bias of the query-key offsets inside a window."""
        coords = torch.stack(torch.meshgrid([torch.arange(w) for w in win], indexing="ij")).flatten(1)  # (D, P)
        rel = coords[:, :, None] - coords[:, None, :]
        idx = torch.zeros(rel.shape[1:], dtype=torch.long)
        for i, w in enumerate(self.window_size):
            idx = idx * (2 * w - 1) + rel[i] + (w - 1)
        device = self.relative_position_bias_table.device
        return self.relative_position_bias_table[idx.to(device)].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                grid_shape: Optional[List[int]] = None) -> torch.Tensor:
        _check_mask(x, mask)
        n_extra, grid = _grid_split(x.shape[1], grid_shape, "window attention")
        if len(grid) != self.spatial_dims:
            raise ValueError(f"window attention built for {self.spatial_dims}D grids got grid_shape={grid}")
        b, n, _ = x.shape
        h, d = self.num_heads, self.dim_head
        keep = torch.ones(b, n, dtype=torch.bool, device=x.device) if mask is None else mask.to(torch.bool)
        qkv = self.qkv(x)
        win, shift = self.geometry(grid)
        # grid part: (B, *G, 3C) with the mask as one more channel, padded to whole windows, cyclically shifted
        gq = torch.cat([qkv[:, n_extra:], keep[:, n_extra:, None].to(qkv.dtype)], dim=-1).reshape([b] + grid + [-1])
        pad = [(-g) % w for g, w in zip(grid, win)]
        pad_arg: List[int] = [0, 0]
        for p in reversed(pad):
            pad_arg += [0, p]
        gq = F.pad(gq, pad_arg)
        padded = [g + p for g, p in zip(grid, pad)]
        if any(shift):
            gq = torch.roll(gq, [-s for s in shift], dims=list(range(1, 1 + len(grid))))
        wins = _windows(gq, win)  # (B*nW, P, 3C+1)
        c3 = 3 * self.inner_dim
        wkeep = wins[..., c3] > 0.5
        q, k, v = (wins[..., i * self.inner_dim:(i + 1) * self.inner_dim].reshape(-1, wins.shape[1], h, d)
                   .transpose(1, 2) for i in range(3))
        scores = torch.matmul(q, k.transpose(-2, -1)) * d**-0.5 + self.relative_bias(win).to(q.dtype)
        allowed = wkeep[:, None, :].expand(-1, wins.shape[1], -1)
        if any(shift):
            region = self._regions(padded, win, shift, x.device)  # (nW, P)
            same = region[:, :, None] == region[:, None, :]
            allowed = allowed & same.repeat(b, 1, 1)
        if n_extra > 0:
            ex = qkv[:, :n_extra]
            nw = wins.shape[0] // b
            ek = self._split_heads(ex[..., self.inner_dim:2 * self.inner_dim]).repeat_interleave(nw, dim=0)
            ev = self._split_heads(ex[..., 2 * self.inner_dim:]).repeat_interleave(nw, dim=0)
            scores = torch.cat([scores, torch.matmul(q, ek.transpose(-2, -1)) * d**-0.5], dim=-1)
            ekeep = keep[:, :n_extra].repeat_interleave(nw, dim=0)[:, None, :].expand(-1, wins.shape[1], -1)
            allowed = torch.cat([allowed, ekeep], dim=-1)
            k, v = torch.cat([k, ek], dim=2), torch.cat([v, ev], dim=2)
        attn = self.drop_attn(torch.softmax(_masked_fill_min(scores, allowed[:, None]), dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, wins.shape[1], self.inner_dim)
        out = _unwindows(out, win, padded, b)
        if any(shift):
            out = torch.roll(out, shift, dims=list(range(1, 1 + len(grid))))
        out = out[tuple([slice(None)] + [slice(0, g) for g in grid])].reshape(b, -1, self.inner_dim)
        if n_extra > 0:  # extra tokens: global attention over all real tokens
            c = self.inner_dim
            qe = self._split_heads(qkv[:, :n_extra, :c])
            ke, ve = self._split_heads(qkv[..., c:2 * c]), self._split_heads(qkv[..., 2 * c:])
            s = _masked_fill_min(torch.matmul(qe, ke.transpose(-2, -1)) * d**-0.5, keep[:, None, None, :])
            eo = torch.matmul(self.drop_attn(torch.softmax(s, dim=-1)), ve)
            out = torch.cat([self._merge_heads(eo), out], dim=1)
        out = self.drop_output(self.out_proj(out))
        return out * keep.unsqueeze(-1).to(out.dtype)

    @staticmethod
    def _regions(padded: List[int], win: List[int], shift: List[int], device: torch.device) -> torch.Tensor:
        """Swin's region labels of the shifted grid, per window: ``(nW, prod(win))``."""
        label = torch.zeros(padded, dtype=torch.long, device=device)
        for i, (g, w, s) in enumerate(zip(padded, win, shift)):
            if s == 0:
                continue
            r = torch.zeros(g, dtype=torch.long, device=device)
            r[g - w:g - s] = 1
            r[g - s:] = 2
            view = [1] * len(padded)
            view[i] = g
            label = label * 3 + r.view(view)
        return _windows(label[None, ..., None], win)[..., 0]

