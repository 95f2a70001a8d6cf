"""Attention types against independent naive implementations of their formulas."""

from __future__ import annotations

import time

import pytest
import torch

from monai_ext.networks import ATTENTION_REGISTRY, build_attention

TYPES = ["softmax", "softmax_free", "sima"]


def _qkv_heads(attn, x):
    """Per-head q, k, v as plain (B, h, N, d) tensors, computed from the module's weights by hand."""
    w, b = attn.qkv.weight, attn.qkv.bias
    y = x @ w.T + (b if b is not None else 0)
    c = attn.inner_dim
    q, k, v = y[..., :c], y[..., c : 2 * c], y[..., 2 * c :]
    return q, k, v


def _heads(t, h):
    bsz, n, c = t.shape
    return t.reshape(bsz, n, h, c // h).permute(0, 2, 1, 3)


def naive_attention(attn, x, mask=None):
    """Loop over samples; only the real tokens of each sample enter its computation."""
    h = attn.num_heads
    name = attn.attention_name
    outs = []
    for i in range(x.shape[0]):
        keep = torch.ones(x.shape[1], dtype=torch.bool) if mask is None else mask[i]
        xi = x[i : i + 1, keep]
        q, k, v = _qkv_heads(attn, xi)
        n = xi.shape[1]
        if name == "softmax_free":
            def seqnorm(t, g, bt):
                mu = t.mean(dim=1, keepdim=True)
                var = ((t - mu) ** 2).mean(dim=1, keepdim=True)
                return (t - mu) / torch.sqrt(var + attn.eps) * g + bt

            q = seqnorm(q, attn.q_gamma, attn.q_beta)
            k = seqnorm(k, attn.k_gamma, attn.k_beta)
            v = seqnorm(v, attn.v_gamma, attn.v_beta)
            q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
            o = (q @ k.transpose(-1, -2)) @ v / n  # explicit quadratic form
        elif name == "sima":
            q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
            q = q / q.abs().sum(dim=2, keepdim=True)
            k = k / k.abs().sum(dim=2, keepdim=True)
            o = (q @ k.transpose(-1, -2)) @ v
        elif name == "softmax":
            q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
            a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            o = a @ v
        else:
            raise AssertionError(name)
        o = o.permute(0, 2, 1, 3).reshape(1, n, -1)
        o = o @ attn.out_proj.weight.T + attn.out_proj.bias
        full = torch.zeros(x.shape[1], x.shape[2], dtype=x.dtype)
        full[keep] = o[0]
        outs.append(full)
    return torch.stack(outs)


def _random_affine(attn):
    """Non-trivial gamma/beta so the test checks that they are applied per feature."""
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("beta"):
                p.copy_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("n_tokens", [5, 40])  # N < d (d = 16) and N > d
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_naive_formula(name, n_tokens, with_mask):
    torch.manual_seed(0)
    attn = build_attention(name, hidden_size=64, num_heads=4, qkv_bias=True).double().eval()
    _random_affine(attn)
    x = torch.randn(3, n_tokens, 64, dtype=torch.float64)
    mask = None
    if with_mask:
        mask = torch.ones(3, n_tokens, dtype=torch.bool)
        mask[0, -2:] = False
        mask[2, 1] = False  # padding need not be at the end
    got = attn(x, mask)
    want = naive_attention(attn, x, mask)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TYPES)
def test_padding_does_not_change_real_tokens(name):
    torch.manual_seed(1)
    attn = build_attention(name, hidden_size=32, num_heads=2).eval()
    _random_affine(attn)
    x = torch.randn(2, 20, 32)
    ref = attn(x)
    padded = torch.cat([x, 100 * torch.randn(2, 7, 32)], dim=1)  # garbage in the padding
    mask = torch.cat([torch.ones(2, 20, dtype=torch.bool), torch.zeros(2, 7, dtype=torch.bool)], dim=1)
    out = attn(padded, mask)
    torch.testing.assert_close(out[:, :20], ref, atol=1e-5, rtol=1e-4)
    assert torch.all(out[:, 20:] == 0)


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError) as e:
        build_attention("flash", hidden_size=32, num_heads=2)
    for name in TYPES:
        assert name in str(e.value)
    assert set(TYPES) <= set(ATTENTION_REGISTRY)


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        build_attention("softmax_free", hidden_size=30, num_heads=4)


def test_bad_mask_shape():
    attn = build_attention("softmax_free", hidden_size=16, num_heads=2)
    with pytest.raises(ValueError, match="mask"):
        attn(torch.randn(2, 5, 16), torch.ones(2, 6, dtype=torch.bool))


def _saved_bytes_and_time(attn, n, repeats=3):
    """Bytes the autograd graph keeps for backward (activation memory) and the best fwd+bwd CPU time of this process
    (``process_time``: the suite's other workers and processes on the machine do not count, wall time would)."""
    x = torch.randn(1, n, attn.hidden_size, requires_grad=True)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x).sum().backward()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        attn(x).sum().backward()
        best = min(best, time.process_time() - t0)
    return saved, best


def test_softmax_free_scales_linearly():
    """Measured: N 1024 -> 8192 (8x) must cost far less than the 64x of a quadratic method."""
    torch.manual_seed(0)
    sf = build_attention("softmax_free", hidden_size=64, num_heads=4)
    mem_small, t_small = _saved_bytes_and_time(sf, 1024)
    mem_big, t_big = _saved_bytes_and_time(sf, 8192)
    mem_ratio, time_ratio = mem_big / mem_small, t_big / t_small
    assert mem_ratio < 12, f"activation memory grew {mem_ratio:.1f}x for 8x tokens"
    assert time_ratio < 24, f"time grew {time_ratio:.1f}x for 8x tokens"


# ------------------------------------------------------------------ complexity: FLOPs counted, not timed
LINEAR = ["softmax_free", "sima"]


def _flops(name: str, n: int, hidden: int, heads: int, mask: bool, backward: bool = False) -> int:
    """Matmul FLOPs of one forward (and backward) pass, counted by torch on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    attn = build_attention(name, hidden_size=hidden, num_heads=heads).to("meta").train(backward)
    x = torch.empty(2, n, hidden, device="meta", requires_grad=backward)
    m = torch.ones(2, n, dtype=torch.bool, device="meta") if mask else None
    with FlopCounterMode(display=False) as counter:
        y = attn(x, m)
        if backward:
            y.sum().backward()
    return counter.get_total_flops()


def _costs(n: int, hidden: int, heads: int, batch: int = 2) -> tuple[int, int, int]:
    """Forward FLOPs of the projections (qkv + out), of ``Q (K^T V)`` and of ``(Q K^T) V``."""
    d = hidden // heads
    proj = 2 * batch * n * hidden * 4 * hidden
    return proj, 4 * batch * heads * n * d * d, 4 * batch * heads * n * n * d


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("mask", [False, True])
def test_linear_attention_flops_grow_linearly_for_many_tokens(name, mask):
    """N >> d: cost of ``Q (K^T V)``; 8x the tokens, 8x the FLOPs (forward and backward). A quadratic
    order ((Q K^T) V, or an N x N attention map) costs 64x and fails here."""
    hidden, heads = 64, 4  # d = 16
    for n in (1024, 8192):
        proj, linear, _quadratic = _costs(n, hidden, heads)
        assert _flops(name, n, hidden, heads, mask) <= 1.02 * (proj + linear), (name, n)
    fwd = [_flops(name, n, hidden, heads, mask) for n in (1024, 8192)]
    both = [_flops(name, n, hidden, heads, mask, backward=True) for n in (1024, 8192)]
    assert fwd[1] / fwd[0] <= 8.1 and both[1] / both[0] <= 8.1, (fwd, both)


@pytest.mark.parametrize("mask", [False, True])
def test_sima_takes_the_cheaper_order_for_few_tokens(mask):
    """N << d: SimA computes ``(Q K^T) V`` (N^2 d), cheaper than ``Q (K^T V)`` (N d^2); softmax-free attention
    never costs more than its linear order."""
    hidden, heads, n = 256, 2, 8  # d = 128
    proj, linear, quadratic = _costs(n, hidden, heads)
    assert quadratic < linear
    assert _flops("sima", n, hidden, heads, mask) <= 1.02 * (proj + quadratic)
    assert _flops("softmax_free", n, hidden, heads, mask) <= 1.02 * (proj + linear)


def test_softmax_flops_quadratic_reference():
    """The counter sees the N x N work of exact attention (so the linear tests above can fail)."""
    proj, _, quadratic = _costs(2048, 64, 4)
    assert _flops("softmax", 2048, 64, 4, mask=False) >= proj + quadratic


# ------------------------------------------------------------------ blind spots found by mutation testing
def test_sequence_norm_against_naive_statistics():
    """Per sample and feature over real tokens: zero mean, unit (biased) variance; padding comes out zero."""
    from monai_ext.networks.attention import sequence_norm

    torch.manual_seed(3)
    x = 3 + 2 * torch.randn(2, 9, 5, dtype=torch.float64)
    got = sequence_norm(x, eps=1e-5)
    want = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(got, want)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 0] = False
    got = sequence_norm(x, mask, eps=0.5)
    for i in range(2):
        r = x[i, mask[i]]
        want = (r - r.mean(0)) / torch.sqrt(r.var(0, unbiased=False) + 0.5)
        torch.testing.assert_close(got[i, mask[i]], want)
        assert torch.all(got[i, ~mask[i]] == 0)
    assert torch.all(sequence_norm(torch.zeros(1, 4, 3)) == 0)  # constant features: no NaN (eps)
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert torch.all(sequence_norm(x[:1, :4], empty) == 0)  # no real token: zeros, no NaN


def test_sima_zero_columns_stay_finite():
    """An all-zero query/key channel is divided by the eps floor (default 1e-6), not by zero."""
    attn = build_attention("sima", hidden_size=8, num_heads=2).eval()
    assert attn.eps == 1e-6
    out = attn(torch.zeros(1, 5, 8))
    assert torch.isfinite(out).all()


def test_register_attention_names_and_conflicts():
    from monai_ext.networks.attention import MultiHeadAttentionBase, register_attention

    cls = ATTENTION_REGISTRY["sima"]
    assert register_attention("sima")(cls) is cls and cls.attention_name == "sima"  # same class again: fine

    class Other(MultiHeadAttentionBase):
        pass

    with pytest.raises(ValueError, match="'sima' is already registered \\(SimAAttention\\)"):
        register_attention("sima")(Other)
    assert ATTENTION_REGISTRY["sima"] is cls and Other.attention_name == "base"
    try:
        assert register_attention("_test_only")(Other) is Other and Other.attention_name == "_test_only"
        assert isinstance(build_attention("_test_only", hidden_size=8, num_heads=2), Other)
    finally:
        ATTENTION_REGISTRY.pop("_test_only", None)


@pytest.mark.parametrize("name", TYPES)
def test_dim_head_and_default_dropout(name):
    """``dim_head`` other than ``C / h`` (inner width 4 * 8 = 32 for C = 16) against the naive formula, and no
    dropout by default: two training-mode passes agree."""
    torch.manual_seed(4)
    attn = build_attention(name, hidden_size=16, num_heads=4, dim_head=8).double()
    assert attn.qkv.out_features == 3 * 32 and attn.out_proj.in_features == 32 and attn.dropout_rate == 0.0
    _random_affine(attn)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    attn.train()
    torch.testing.assert_close(attn(x), attn(x), rtol=0, atol=0)
    torch.testing.assert_close(attn.eval()(x), naive_attention(attn, x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("export", ["traced", "scripted"])  # (mutation testing runs the traced case only)
@pytest.mark.parametrize("name", TYPES)
def test_torchscript_matches_eager(name, export):
    """TorchScript (scripting and tracing take softmax-free attention's graph path, not its fused autograd
    kernel) gives the eager output, padding included."""
    torch.manual_seed(5)
    attn = build_attention(name, hidden_size=32, num_heads=4, qkv_bias=True).eval()
    _random_affine(attn)
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    want = attn(x, mask)
    ts = torch.jit.trace(attn, (x, mask)) if export == "traced" else torch.jit.script(attn)
    torch.testing.assert_close(ts(x, mask), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TYPES)
def test_defaults_and_mask_checks(name):
    attn = build_attention(name, hidden_size=16, num_heads=2)
    assert attn.qkv.bias is None and attn.dropout_rate == 0.0
    if hasattr(attn, "eps"):
        assert attn.eps == {"softmax_free": 1e-5, "sima": 1e-6}[name]
    x = torch.randn(2, 5, 16)
    for bad in (torch.ones(3, 5, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool),
                torch.ones(2, 5, 1, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"mask must be \(B, N\) bool matching the tokens \(B, N, C\)"):
            attn(x, bad)
