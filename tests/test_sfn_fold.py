"""The folded softmax-free attention (issue 15) against the unfolded formula it replaces.

References: ``_softmax_free_reference`` (the pre-fold implementation: normalized Q~, K~, V~ materialized),
a copy of the pre-fold module class (old checkpoints), finite differences (``gradcheck``) for the
hand-written backward, and fp32 for bf16 autocast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monai_ext.networks import (
    UNETR,
    SoftmaxFreeAttention,
    ViT,
    build_attention,
    sequence_norm,
)
from monai_ext.networks.attention import (
    MultiHeadAttentionBase,
    _sfn_fold_graph,
    _softmax_free_reference,
    _SoftmaxFreeFold,
)

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def _random_affine(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial gamma/beta (the defaults 1/0 would hide a wrong affine term)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("beta"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _mask(bsz: int, n: int) -> torch.Tensor:
    mask = torch.ones(bsz, n, dtype=torch.bool)
    mask[0, -3:] = False
    mask[-1, 1] = False  # padding need not be at the end
    return mask


def _outputs_and_grads(fn, module: torch.nn.Module, x: torch.Tensor, w: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y * w).sum(), [x, *params])
    return y.detach(), grads, [n for n, p in module.named_parameters() if p.requires_grad]


def _assert_same(fold, ref, names, tol=1e-5):
    """Outputs and every gradient within ``tol``, relative to the tensor's own largest entry (fp32).

    Gradients that are analytically zero (the sequence normalization is invariant to a per-feature shift,
    so the qkv bias and the LayerNorm bias before it get none) are float noise in both computations;
    they are held to ``tol`` relative to the largest gradient of all, and must be that small."""
    (y, g), (yr, gr) = fold, ref
    scale = yr.abs().max().clamp_min(1.0)
    assert (y - yr).abs().max() <= tol * scale, f"output differs by {(y - yr).abs().max():.2e}"
    top = max(b.abs().max() for b in gr)
    for name, a, b in zip(["input", *names], g, gr):
        own = b.abs().max()
        zero = own < 1e-4 * top
        err = (a - b).abs().max() / (top if zero else own)
        assert err <= tol, f"gradient of {name} differs by {err:.2e} (relative{' to all' if zero else ''})"
        if zero:
            assert name.endswith("bias") and a.abs().max() <= tol * top, name


# N < d, d < N < hidden (Q~ M per head) and N >= hidden (M folded into the output projection)
@pytest.mark.parametrize("n_tokens", [5, 40, 96])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fold_equals_unfolded_formula_fp32(n_tokens, with_mask):
    torch.manual_seed(0)
    attn = build_attention("softmax_free", hidden_size=64, num_heads=4, qkv_bias=True)  # d = 16
    _random_affine(attn)
    x = torch.randn(3, n_tokens, 64) + 0.5  # a mean offset: the fold must handle uncentred features
    w = torch.randn(3, n_tokens, 64)
    mask = _mask(3, n_tokens) if with_mask else None
    y, g, names = _outputs_and_grads(lambda t: attn(t, mask), attn, x, w)
    yr, gr, _ = _outputs_and_grads(lambda t: _softmax_free_reference(attn, t, mask), attn, x, w)
    assert {"q_gamma", "q_beta", "k_gamma", "k_beta", "v_gamma", "v_beta", "out_proj.weight"} <= set(names)
    _assert_same((y, g), (yr, gr), names)
    if with_mask:
        assert torch.all(y[~mask] == 0)


def test_reference_is_the_formula():
    """The test reference itself against the formula written out per sample on real tokens only."""
    torch.manual_seed(1)
    attn = build_attention("softmax_free", hidden_size=32, num_heads=2).double()
    _random_affine(attn)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    mask = _mask(2, 9)
    ref = _softmax_free_reference(attn, x, mask)
    for i in range(2):
        xi = x[i : i + 1, mask[i]]
        q, k, v = attn.qkv(xi).chunk(3, dim=-1)
        q = sequence_norm(q) * attn.q_gamma + attn.q_beta
        k = sequence_norm(k) * attn.k_gamma + attn.k_beta
        v = sequence_norm(v) * attn.v_gamma + attn.v_beta
        heads = [(q[0, :, j * 16 : (j + 1) * 16] @ (k[0, :, j * 16 : (j + 1) * 16].T @ v[0, :, j * 16 : (j + 1) * 16]))
                 / xi.shape[1] for j in range(2)]
        want = attn.out_proj(torch.cat(heads, dim=-1))
        torch.testing.assert_close(ref[i, mask[i]], want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n_tokens", [6, 13])  # per-head path (N < hidden) and folded output (N >= hidden)
@pytest.mark.parametrize("with_mask", [False, True])
def test_handwritten_backward_gradcheck(n_tokens, with_mask):
    """The custom backward against finite differences (float64), every input incl. the parameters."""
    torch.manual_seed(2)
    c, heads, hidden = 8, 2, 12  # inner dim 8 (d = 4), output projection 8 -> 12
    qkv = (torch.randn(2, n_tokens, 3 * c, dtype=torch.float64) + 0.3).requires_grad_(True)
    gammas = (1 + 0.3 * torch.randn(3 * c, dtype=torch.float64)).requires_grad_(True)
    betas = (0.3 * torch.randn(3 * c, dtype=torch.float64)).requires_grad_(True)
    w_o = torch.randn(hidden, c, dtype=torch.float64, requires_grad=True)
    b_o = torch.randn(hidden, dtype=torch.float64, requires_grad=True)
    mask = _mask(2, n_tokens) if with_mask else None

    def fn(qkv, gammas, betas, w_o, b_o):
        return _SoftmaxFreeFold.apply(qkv, mask, gammas, betas, w_o, b_o, heads, 1e-5)

    assert torch.autograd.gradcheck(fn, (qkv, gammas, betas, w_o, b_o), eps=1e-6, atol=1e-6)
    # and the graph path (TorchScript / ONNX) gives the same output
    graph = _sfn_fold_graph(qkv, mask, list(gammas.chunk(3)), list(betas.chunk(3)), w_o, b_o, heads, 1e-5)
    eager = fn(qkv, gammas, betas, w_o, b_o)
    keep = mask.unsqueeze(-1) if mask is not None else torch.ones(1, 1, 1, dtype=torch.bool)
    torch.testing.assert_close(eager * keep, graph * keep, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("n_side", [2, 8])  # N < d and N > hidden
def test_vit_fold_equals_unfolded(spatial_dims, n_side, monkeypatch):
    """Whole 2D / 3D ViTs (classification head, class token): outputs and all gradients."""
    torch.manual_seed(3)
    img = (4 * n_side,) * 2 + ((8,) if spatial_dims == 3 else ())
    patch = (4, 4) + ((4,) if spatial_dims == 3 else ())
    net = ViT(1, img, patch, hidden_size=48, mlp_dim=64, num_layers=2, num_heads=2, spatial_dims=spatial_dims,
              classification=True, num_classes=3, attention="softmax_free")
    _random_affine(net)
    x = torch.randn(2, 1, *img)
    w = torch.randn(2, 3)
    fold = _outputs_and_grads(net, net, x, w)
    monkeypatch.setattr(SoftmaxFreeAttention, "forward", _softmax_free_reference)
    ref = _outputs_and_grads(net, net, x, w)
    _assert_same(fold[:2], ref[:2], fold[2])


class _PreFoldSoftmaxFree(MultiHeadAttentionBase):
    """The module as it was before the fold (commit 877ca0c), parameters registered in the same order."""

    def __init__(self, hidden_size, num_heads, dropout_rate=0.0, qkv_bias=False, dim_head=None, eps=1e-5):
        super().__init__(hidden_size, num_heads, dropout_rate, qkv_bias, dim_head)
        self.eps = eps
        for name in ("q", "k", "v"):
            setattr(self, f"{name}_gamma", torch.nn.Parameter(torch.ones(self.inner_dim)))
            setattr(self, f"{name}_beta", torch.nn.Parameter(torch.zeros(self.inner_dim)))

    def project(self, q, k, v, mask):
        q = sequence_norm(q, mask, self.eps) * self.q_gamma + self.q_beta
        k = sequence_norm(k, mask, self.eps) * self.k_gamma + self.k_beta
        v = sequence_norm(v, mask, self.eps) * self.v_gamma + self.v_beta
        if mask is not None:
            m = mask.unsqueeze(-1).to(k.dtype)
            k, v = k * m, v * m
        return q, k, v

    def attend(self, q, k, v, mask):
        kv = torch.matmul(k.transpose(-2, -1), v)
        if mask is None:
            kv = kv / q.shape[2]
        else:
            kv = kv / mask.sum(dim=1).to(q.dtype).clamp_min(1.0).view(-1, 1, 1, 1)
        return torch.matmul(q, kv)


def test_old_checkpoint_same_outputs(tmp_path):
    """A UNETR checkpoint written with the pre-fold attention loads (strict, weights_only) into the new
    code and gives the same outputs, with and without padding masks."""
    torch.manual_seed(4)
    kw = {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 2, "spatial_dims": 2,
          "attention": "softmax_free"}
    old = UNETR(1, 2, (32, 32), patch_size=4, **kw)  # 64 tokens
    for blk in old.vit.blocks:
        pre = _PreFoldSoftmaxFree(32, 2)
        pre.load_state_dict(blk.attn.state_dict())
        blk.attn = pre
    _random_affine(old)
    old.eval()
    torch.save(old.state_dict(), tmp_path / "model.pt")
    new = UNETR(1, 2, (32, 32), patch_size=4, **kw).eval()
    new.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert isinstance(new.vit.blocks[0].attn, SoftmaxFreeAttention)
    x = torch.randn(2, 1, 32, 32)
    mask = _mask(2, 64)
    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(new(x, m), old(x, m), atol=1e-5, rtol=1e-5)


def _bundle_network(bundle: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.yaml"))
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("network_def#in_channels")


@pytest.mark.parametrize("bundle", ["duke_breast_mri_classification", "vindr_cxr_cardiomegaly_classification",
                                    "apf_unetr_btcv_segmentation", "apf_unetr_paip_segmentation"])
def test_bundle_networks_unchanged(bundle, monkeypatch):
    """Each bundle's own network (its train.yaml, default preset) with fixed weights: fold == old formula
    on a fixed input (APF: with padded leaves), so training is unchanged up to float rounding."""
    torch.manual_seed(5)
    net, in_channels = _bundle_network(bundle)
    net.eval()
    assert any(isinstance(m, SoftmaxFreeAttention) for m in net.modules())
    _random_affine(net)
    if hasattr(net, "num_tokens"):  # APF-UNETR: pseudo-image + leaf mask
        side = net.side * net.patch_size
        args = (torch.randn(2, in_channels, side, side), _mask(2, net.num_tokens))
    else:
        args = (torch.randn(2, in_channels, *net.img_size),)
    with torch.no_grad():
        y = net(*args)
        monkeypatch.setattr(SoftmaxFreeAttention, "forward", _softmax_free_reference)
        yr = net(*args)
    assert (y - yr).abs().max() <= 1e-5 * yr.abs().max().clamp_min(1.0)


def _saved_bytes(fn, x) -> int:
    """Bytes of distinct storages autograd keeps for backward."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def test_fold_keeps_only_the_projection_output_for_backward():
    """Activation memory: the fold keeps x and the qkv output (4 N C floats), the unfolded formula also
    normalized copies of Q, K and V; plain linear attention keeps at least as much as the fold."""
    torch.manual_seed(6)
    n, c = 2048, 64
    attn = build_attention("softmax_free", hidden_size=c, num_heads=4)
    x = torch.randn(1, n, c, requires_grad=True)
    fold = _saved_bytes(attn, x)
    ref = _saved_bytes(lambda t: _softmax_free_reference(attn, t), x)

    def floor(t):
        q, k, v = (attn._split_heads(u) for u in attn.qkv(t).chunk(3, dim=-1))
        return attn.out_proj(attn._merge_heads(q @ (k.transpose(-2, -1) @ v) / n))

    plain = _saved_bytes(floor, x)
    weights = sum(p.numel() * 4 for p in attn.parameters())
    assert fold - weights <= 4 * n * c * 4 * 1.03, fold  # x (N C) + qkv (3 N C), plus O(C^2) constants
    assert fold * 2 < ref and fold <= plain, (fold, ref, plain)


def test_bf16_autocast_long_sequence():
    """bf16 autocast at 16384 tokens vs fp32: finite, statistics and K^T V in fp32, close to fp32."""
    torch.manual_seed(7)
    attn = build_attention("softmax_free", hidden_size=64, num_heads=2)
    _random_affine(attn)
    x = (torch.randn(1, 16384, 64) + 1.0).requires_grad_(True)
    y32 = attn(x)
    y32.square().mean().backward()
    g32 = x.grad.clone()
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x)
    assert y16.dtype == torch.bfloat16
    y16.float().square().mean().backward()
    assert torch.isfinite(y16).all() and torch.isfinite(x.grad).all()
    err = ((y16.float() - y32).norm() / y32.norm()).item()
    gerr = ((x.grad - g32).norm() / g32.norm()).item()
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 = 0.2%, the qkv projection runs in bf16): measured
    # 0.41% (output) / 0.47% (input gradient); the unfolded formula under the same autocast: 0.86% (output)
    assert err < 0.01 and gerr < 0.01, (err, gerr)


def test_fp16_autocast_does_not_overflow_where_the_old_formula_does():
    """Sums over N of normalized values overflow fp16 (max 65504) in K~^T V~ for long sequences; the fold
    accumulates in fp32 (CPU autocast fp16 stands in for the GPU's)."""
    torch.manual_seed(8)
    attn = build_attention("softmax_free", hidden_size=32, num_heads=1)
    with torch.no_grad():
        attn.k_beta.fill_(2.0)
        attn.v_beta.fill_(2.0)  # K~^T V~ ~ N * 4 = 65536 * 4 > 65504
    x = torch.randn(1, 65536, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        y = attn(x)
        old = _softmax_free_reference(attn, x.half())
    y32 = attn(x).detach()
    assert not torch.isfinite(old).all()  # the reference really overflows here
    assert torch.isfinite(y).all()
    assert ((y.float() - y32).norm() / y32.norm()) < 0.01


def test_torchscript_with_mask_matches_eager():
    torch.manual_seed(9)
    attn = build_attention("softmax_free", hidden_size=16, num_heads=2).eval()
    _random_affine(attn)
    ts = torch.jit.script(attn)
    for n in (5, 24):  # per-head and folded output paths
        x = torch.randn(2, n, 16)
        mask = _mask(2, n)
        with torch.no_grad():
            torch.testing.assert_close(ts(x, mask), attn(x, mask), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ts(x, None), attn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_compiled_path_equals_unfolded(with_mask):
    """The optional ``torch.compile`` path (the graph fold under autograd). Backend ``eager``: dynamo's
    tracing without inductor's minute-long C++ build; the graph and its autograd are the same."""
    torch.manual_seed(10)
    attn = build_attention("softmax_free", hidden_size=32, num_heads=2, compile_backend="eager")
    _random_affine(attn)
    x, w = torch.randn(2, 40, 32) + 0.5, torch.randn(2, 40, 32)
    mask = _mask(2, 40) if with_mask else None
    y, g, names = _outputs_and_grads(lambda t: attn(t, mask), attn, x, w)
    yr, gr, _ = _outputs_and_grads(lambda t: _softmax_free_reference(attn, t, mask), attn, x, w)
    _assert_same((y, g), (yr, gr), names)
