"""The efficient-attention zoo (linformer, performer, fastformer, xca, window) against independent naive
implementations of their formulas, padding, timm's XCiT code, and FLOP counts."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from monai_ext.networks import APFUNETR, ViT, block_attention_kwargs, build_attention

ZOO = ["linformer", "performer", "fastformer", "xca", "window"]
GRID = [6, 5]  # 30 grid tokens
KW = {"linformer": dict(max_len=64, proj_len=8), "performer": dict(num_features=24), "fastformer": {},
      "xca": {}, "window": dict(window_size=3, shifted=True)}


def _qkv(attn, x):
    y = x @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0)
    c, h = attn.inner_dim, attn.num_heads
    return [y[:, i * c:(i + 1) * c].reshape(-1, h, c // h).transpose(0, 1) for i in range(3)]  # (h, n, d)


def _out(attn, o):
    """(h, n, d) -> (n, C) through the output projection."""
    return o.transpose(0, 1).reshape(o.shape[1], -1) @ attn.out_proj.weight.T + attn.out_proj.bias


def naive_linformer(attn, x, pos):
    q, k, v = _qkv(attn, x)
    e, f = attn.proj_k[:, pos], attn.proj_v[:, pos]
    a = torch.softmax(q @ (e @ k).transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return _out(attn, a @ (f @ v))


def naive_performer(attn, x, pos):
    q, k, v = _qkv(attn, x)
    w, m, eps = attn.projection.double(), attn.num_features, attn.feature_eps
    d = q.shape[-1]
    outs = []
    for i in range(q.shape[0]):
        qs, ks = q[i] / d**0.25, k[i] / d**0.25
        pq, pk = qs @ w.T, ks @ w.T
        fq = (torch.exp(pq - (qs**2).sum(-1, keepdim=True) / 2 - pq.max(dim=1, keepdim=True).values) + eps) / m**0.5
        fk = (torch.exp(pk - (ks**2).sum(-1, keepdim=True) / 2 - pk.max()) + eps) / m**0.5
        outs.append(torch.stack([(fq[t] @ fk.T) @ v[i] / (fq[t] @ fk.T).sum() for t in range(len(qs))]))
    return _out(attn, torch.stack(outs))


def naive_fastformer(attn, x, pos):
    q, k, v = _qkv(attn, x)
    d = q.shape[-1]
    outs = []
    for i in range(q.shape[0]):
        alpha = torch.softmax(q[i] @ attn.w_q[i] / d**0.5, dim=0)
        gq = (alpha[:, None] * q[i]).sum(0)
        p = gq * k[i]
        beta = torch.softmax(p @ attn.w_k[i] / d**0.5, dim=0)
        gk = (beta[:, None] * p).sum(0)
        outs.append(q[i] + (gk * v[i]) @ attn.transform_weight[i] + attn.transform_bias[i])
    return _out(attn, torch.stack(outs))


def naive_xca(attn, x, pos):
    q, k, v = _qkv(attn, x)
    outs = []
    for i in range(q.shape[0]):
        qn, kn = q[i] / q[i].norm(dim=0), k[i] / k[i].norm(dim=0)
        a = torch.softmax(qn.T @ kn * attn.temperature[i, 0, 0], dim=-1)  # (d, d)
        outs.append((a @ v[i].T).T)
    return _out(attn, torch.stack(outs))


def naive_window(attn, x, pos, grid, n_extra=0):
    """Each real grid token attends the real grid tokens with the same ``floor((p - shift) / window)`` in every
    dimension (Swin's shifted windows without the cyclic-shift trick) plus the extra tokens; extra tokens attend
    everything. ``pos``: the positions of the given (real) tokens in the full sequence."""
    q, k, v = _qkv(attn, x)
    win, shift = attn.geometry(grid)
    coords = []
    for p in pos:
        g = p - n_extra
        c = []
        for size in reversed(grid):
            c.append(g % size)
            g //= size
        coords.append(list(reversed(c)) if p >= n_extra else None)
    out = torch.zeros_like(q)
    for t, ct in enumerate(coords):
        for head in range(q.shape[0]):
            keys, bias = [], []
            for s, cs in enumerate(coords):
                if ct is None or cs is None:
                    if ct is None or cs is None:
                        keys.append(s)
                        bias.append(0.0)
                    continue
                if all((a - sh) // w == (b - sh) // w for a, b, w, sh in zip(ct, cs, win, shift)):
                    idx = 0
                    for a, b, w in zip(ct, cs, attn.window_size):
                        idx = idx * (2 * w - 1) + (a - b) + (w - 1)
                    keys.append(s)
                    bias.append(attn.relative_position_bias_table[idx, head])
            bias = torch.stack([torch.as_tensor(b, dtype=q.dtype) for b in bias])
            a = torch.softmax(q[head, t] @ k[head, keys].T / q.shape[-1] ** 0.5 + bias, dim=0)
            out[head, t] = a @ v[head, keys]
    return _out(attn, out)


NAIVE = {"linformer": naive_linformer, "performer": naive_performer, "fastformer": naive_fastformer,
         "xca": naive_xca}


def _build(name, hidden=24, heads=3, **extra):
    kw = {**KW[name], **extra}
    if name == "xca":
        kw.setdefault("lpi", False)
    torch.manual_seed(0)
    attn = build_attention(name, hidden_size=hidden, num_heads=heads, qkv_bias=True, **kw).double().eval()
    with torch.no_grad():
        for n, p in attn.named_parameters():
            if n in ("temperature", "w_q", "w_k", "transform_bias"):
                p.copy_(torch.randn_like(p))
    return attn


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_naive_formula(name, with_mask):
    attn = _build(name)
    x = torch.randn(2, 30, 24, dtype=torch.float64)
    mask = None
    if with_mask:
        mask = torch.ones(2, 30, dtype=torch.bool)
        mask[0, -4:] = False
        mask[1, [2, 11, 12]] = False  # padding need not be at the end
    got = attn(x, mask, GRID)
    for i in range(2):
        keep = torch.ones(30, dtype=torch.bool) if mask is None else mask[i]
        pos = torch.nonzero(keep)[:, 0].tolist()
        if name == "window":
            want = naive_window(attn, x[i, keep], pos, GRID)
        else:
            want = NAIVE[name](attn, x[i, keep], pos)
        torch.testing.assert_close(got[i, keep], want, atol=1e-5, rtol=1e-5)
        assert torch.all(got[i, ~keep] == 0)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_3d_with_class_token_matches_naive(shifted):
    """A 3D grid (window capped at the grid's 2 in the last dim, padded to whole windows in the first) and a
    leading class token attending globally."""
    attn = _build("window", spatial_dims=3, window_size=(3, 2, 4), shifted=shifted)
    grid = [4, 4, 2]
    x = torch.randn(1, 33, 24, dtype=torch.float64)
    mask = torch.ones(1, 33, dtype=torch.bool)
    mask[0, 7] = False
    got = attn(x, mask, grid)
    pos = torch.nonzero(mask[0])[:, 0].tolist()
    want = naive_window(attn, x[0, mask[0]], pos, grid, n_extra=1)
    torch.testing.assert_close(got[0, mask[0]], want, atol=1e-5, rtol=1e-5)
    assert attn.geometry(grid) == ([3, 2, 2], [1, 1, 0] if shifted else [0, 0, 0])


@pytest.mark.parametrize("name", ZOO + ["xca_lpi"])
def test_appended_padding_leaves_real_tokens_unchanged(name):
    """Grid types get padding as appended grid rows (whole windows for ``window``), the others appended tokens;
    the padding holds garbage."""
    lpi = name == "xca_lpi"
    name = "xca" if lpi else name
    attn = _build(name, lpi=lpi) if name == "xca" else _build(name)
    if name == "window":
        attn = _build(name, window_size=2)
    x = torch.randn(2, 30, 24, dtype=torch.float64)
    ref = attn(x, None, GRID)
    extra = 10 if name in ("window", "xca") else 7  # two more grid rows of 5
    grid = [GRID[0] + 2, GRID[1]]
    padded = torch.cat([x, 100 * torch.randn(2, extra, 24, dtype=torch.float64)], dim=1)
    mask = torch.cat([torch.ones(2, 30, dtype=torch.bool), torch.zeros(2, extra, dtype=torch.bool)], dim=1)
    out = attn(padded, mask, grid)
    torch.testing.assert_close(out[:, :30], ref, atol=1e-6, rtol=1e-6)
    assert torch.all(out[:, 30:] == 0)


def _timm_classes() -> dict:
    """timm's own ``XCA`` and ``LPI`` (``timm.models.xcit``). timm's package import needs torchvision, whose
    compiled ops need a CUDA build of torch; on the CPU build the classes' source is executed from the installed
    timm file instead (scripts/setup.sh installs timm without dependencies)."""
    try:
        from timm.models.xcit import LPI, XCA  # noqa: PLC0415

        return {"XCA": XCA, "LPI": LPI}
    except (ImportError, RuntimeError):
        spec = importlib.util.find_spec("timm")
        assert spec is not None and spec.origin, "timm is a test dependency (scripts/setup.sh test)"
        src = (Path(spec.origin).parent / "models" / "xcit.py").read_text()
        tree = ast.parse(src)
        ns: dict = {"torch": torch, "nn": torch.nn, "Optional": __import__("typing").Optional,
                    "Type": type, "use_fused_attn": lambda experimental=False: False}
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in ("XCA", "LPI"):
                exec(compile(ast.Module([node], []), "timm/models/xcit.py", "exec"), ns)  # noqa: S102
        return {"XCA": ns["XCA"], "LPI": ns["LPI"]}


def test_xca_equals_timm_xcit_attention_and_lpi():
    timm = _timm_classes()
    torch.manual_seed(3)
    ours = build_attention("xca", hidden_size=32, num_heads=4, qkv_bias=True, lpi=True).eval()
    ref = timm["XCA"](32, num_heads=4, qkv_bias=True).eval()
    ref_lpi = timm["LPI"](32).eval()
    with torch.no_grad():
        ours.temperature.copy_(torch.rand_like(ours.temperature) + 0.5)
        ours.lpi.bn.running_mean.normal_()
        ours.lpi.bn.running_var.uniform_(0.5, 2)
        ours.lpi.bn.weight.normal_()
    ref.load_state_dict({"temperature": ours.temperature, "qkv.weight": ours.qkv.weight, "qkv.bias": ours.qkv.bias,
                         "proj.weight": ours.out_proj.weight, "proj.bias": ours.out_proj.bias})
    ref_lpi.load_state_dict(ours.lpi.state_dict())
    x = torch.randn(2, 24, 32)
    no_lpi = build_attention("xca", hidden_size=32, num_heads=4, qkv_bias=True, lpi=False).eval()
    no_lpi.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("lpi.")})
    torch.testing.assert_close(no_lpi(x), ref(x), atol=1e-5, rtol=1e-5)
    y = ref(x)
    torch.testing.assert_close(ours(x, None, [4, 6]), y + ref_lpi(y, 4, 6), atol=1e-5, rtol=1e-5)


def test_performer_approximates_softmax_better_with_more_features():
    """FAVOR+ is an unbiased estimator of softmax attention: the error shrinks as the features grow."""
    torch.manual_seed(0)
    x = 0.5 * torch.randn(2, 64, 32, dtype=torch.float64)
    errors = []
    for m in (8, 64, 512):
        err = 0.0
        for seed in range(4):
            torch.manual_seed(seed)
            perf = build_attention("performer", hidden_size=32, num_heads=2, num_features=m,
                                   feature_eps=0.0).double().eval()
            exact = build_attention("softmax", hidden_size=32, num_heads=2).double().eval()
            exact.load_state_dict(perf.state_dict(), strict=False)
            err += (perf(x) - exact(x)).norm().item() / exact(x).norm().item()
        errors.append(err / 4)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05, errors


def test_performer_redraw_policy():
    x = torch.randn(1, 10, 16)
    never = build_attention("performer", hidden_size=16, num_heads=2)
    w0 = never.projection.clone()
    never.train()
    for _ in range(5):
        never(x)
    assert torch.equal(never.projection, w0)
    every = build_attention("performer", hidden_size=16, num_heads=2, redraw_interval=2).train()
    seen = [every.projection.clone()]
    for _ in range(4):
        every(x)
        seen.append(every.projection.clone())
    # drawn at build, then before the 3rd training step: steps 1-2 share the first features, 3-4 the second
    assert torch.equal(seen[1], seen[0]) and torch.equal(seen[2], seen[0]) and not torch.equal(seen[3], seen[2])
    assert torch.equal(seen[4], seen[3])
    every.eval()
    w = every.projection.clone()
    for _ in range(5):
        every(x)
    assert torch.equal(every.projection, w)  # fixed in eval
    assert "projection" in every.state_dict()  # saved: a reloaded model evaluates with the same features


def test_linformer_length_limit_and_network_defaults():
    attn = build_attention("linformer", hidden_size=16, num_heads=2, max_len=8)
    with pytest.raises(ValueError, match="9 tokens exceed max_len=8"):
        attn(torch.randn(1, 9, 16))
    assert block_attention_kwargs("linformer", 0, 197, [14, 14], {"proj_len": 16}) == {"max_len": 197,
                                                                                         "proj_len": 16}
    assert [block_attention_kwargs("window", i, 16, [4, 4])["shifted"] for i in range(3)] == [False, True, False]
    assert block_attention_kwargs("softmax", 1, 16, [4, 4], None) == {}


@pytest.mark.parametrize("name", ["window", "xca"])
def test_grid_types_need_a_grid(name):
    attn = build_attention(name, hidden_size=16, num_heads=2)
    with pytest.raises(ValueError, match="needs the token grid"):
        attn(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="holds 12 tokens but the input has 9"):
        attn(torch.randn(1, 9, 16), None, [3, 4])
    with pytest.raises(ValueError, match="do not form one.*APF-UNETR"):
        APFUNETR(1, 2, num_tokens=16, patch_size=4, feature_size=4, hidden_size=16, mlp_dim=16, num_heads=2,
                 num_layers=1, attention=name)


@pytest.mark.parametrize("name", ZOO)
def test_vit_passes_its_patch_grid(name):
    """ViT (class token + 4x4 grid, window 2 shifted in block 2) trains one step with every type; APF-UNETR takes
    the types that need no grid."""
    torch.manual_seed(0)
    kwargs = {"window": {"window_size": 2}}.get(name)
    net = ViT(1, (16, 16), 4, hidden_size=16, mlp_dim=16, num_layers=2, num_heads=2, spatial_dims=2,
              classification=True, num_classes=3, attention=name, attention_kwargs=kwargs)
    if name == "window":
        assert [b.attn.shifted for b in net.blocks] == [False, True]
    if name == "linformer":
        assert net.blocks[0].attn.max_len == 17
    out = net(torch.randn(2, 1, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    if name not in ("window", "xca"):
        apf = APFUNETR(1, 2, num_tokens=16, patch_size=4, feature_size=4, hidden_size=16, mlp_dim=16,
                       num_heads=2, num_layers=1, attention=name)
        assert apf(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


# ------------------------------------------------------------------ complexity: FLOPs counted, not timed
def _flops(name: str, grid: list[int], hidden: int = 64, heads: int = 4, **kw) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    kw = {**block_attention_kwargs(name, 0, math.prod(grid), grid), **kw}
    attn = build_attention(name, hidden_size=hidden, num_heads=heads, **kw).to("meta").eval()
    x = torch.empty(1, math.prod(grid), hidden, device="meta")
    with FlopCounterMode(display=False) as counter:
        attn(x, None, grid)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ZOO)
def test_flops_linear_in_tokens(name):
    """8x the tokens (32x32 -> 64x128 grid) cost <= 12x the FLOPs (a quadratic type: 64x); ``window`` at a fixed
    window of 8x8. The N x N softmax reference shows the counter sees quadratic work."""
    small, big = [32, 32], [64, 128]
    kw = {"window": {"window_size": 8}, "linformer": {"max_len": 8192}}.get(name, {})
    ratio = _flops(name, big, **kw) / _flops(name, small, **kw)
    assert ratio <= 12, (name, ratio)
    assert _flops("softmax", big) / _flops("softmax", small) > 30
