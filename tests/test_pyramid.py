"""PyramidTransformer: the efficient-transformers benchmark's backbone (paper counts) and a tiny CPU setting."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks import ATTENTION_REGISTRY
from monai_ext.networks.pyramid import PYRAMID_PRESETS, PyramidTransformer, pyramid_preset

#: the benchmark's table (parameters in M, 1000-class heads as its ResNet-50's 25.6M) and the attention
#: arguments of its setting: Linformer's k = 48, Swin's window 8 for patch 7 (its text)
PAPER_PARAMS = {"softmax": 28.27, "linformer": 28.56, "performer": 28.28, "fastformer": 28.28, "xca": 28.28,
                "window": 28.28}
PAPER_KWARGS = {"linformer": {"proj_len": 48}, "window": {"window_size": 8}}


def _paper_net(name: str) -> PyramidTransformer:
    return PyramidTransformer(3, 1000, 224, attention=name, attention_kwargs=PAPER_KWARGS.get(name))


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_parameter_counts_within_5_percent(name):
    net = _paper_net(name)
    n = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(n - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.05, (name, n)
    assert net.stage_grids == [[32, 32], [16, 16], [8, 8], [4, 4]] and net.num_features == 768
    if name == "softmax":  # the ViT row: exactly Swin-T's layout without its bias tables, patch 7
        assert round(n, 2) == 28.27


def test_paper_macs_match_the_table():
    """Patch 7 with stride 7 (32 x 32 tokens at 224) reproduces the table's 1.91 G for full attention (its
    FLOPs are multiply-accumulates, 4.0 G for ResNet-50); stride 4 (56 x 56 tokens) would be ~4.5 G."""
    from torch.utils.flop_counter import FlopCounterMode

    net = _paper_net("softmax").to("meta").eval()
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 3, 224, 224, device="meta"))
    macs = counter.get_total_flops() / 2e9
    assert abs(macs - 1.91) / 1.91 < 0.05, macs


@pytest.mark.parametrize("name, dims", [(n, 2) for n in ("softmax", "linformer", "performer", "fastformer", "xca",
                                                          "window", "softmax_free", "sima")]
                         + [(n, 3) for n in ("softmax", "xca", "window")])
def test_cpu_preset_trains_with_every_attention(name, dims):
    torch.manual_seed(0)
    img = (28, 28) if dims == 2 else (14, 14, 14)
    kwargs = {"window": {"window_size": 2}}.get(name)
    net = PyramidTransformer(1, 4, img, spatial_dims=dims, preset="cpu", attention=name, attention_kwargs=kwargs)
    assert net.stage_grids[0] == [i // 7 for i in img] and len(net.stages) == 4
    x = torch.randn(2, 1, *img)
    out = net(x)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    out.sum().backward()
    assert net.patch_embed.weight.grad is not None and net.patch_embed.weight.grad.abs().sum() > 0


def test_window_shifts_every_second_block_and_presets():
    net = PyramidTransformer(1, 2, 56, preset="cpu", attention="window", depths=(2, 2, 2, 2),
                             attention_kwargs={"window_size": 4})
    assert [[b.attn.shifted for b in stage] for stage in net.stages] == [[False, True]] * 4
    # the first stage's 8 x 8 grid in 4 x 4 windows shifted by 2; the last stage's 1 x 1 grid: no shift
    assert net.stages[0][1].attn.geometry([8, 8]) == ([4, 4], [2, 2])
    assert net.stages[3][1].attn.geometry([1, 1]) == ([1, 1], [0, 0])
    assert set(PYRAMID_PRESETS) == {"paper", "cpu"}
    assert pyramid_preset("cpu", embed_dim=16)["embed_dim"] == 16
    assert {"linformer", "performer", "fastformer", "xca", "window"} <= set(ATTENTION_REGISTRY)


@pytest.mark.parametrize("kwargs, match", [
    (dict(img_size=60), "divisible by the patch stride 7"),
    (dict(img_size=56, num_heads=(3, 2, 4, 8)), "not divisible by num_heads=3"),
    (dict(img_size=56, depths=(1, 1)), "one positive entry per stage"),
    (dict(img_size=56, attention="nystromformer"), "registered attention types"),
    (dict(img_size=56, preset="huge"), "available: \\['cpu', 'paper'\\]"),
])
def test_bad_arguments(kwargs, match):
    args = dict(in_channels=1, num_classes=2, preset="cpu")
    with pytest.raises(ValueError, match=match):
        PyramidTransformer(**{**args, **kwargs})


def test_bad_input_shape():
    net = PyramidTransformer(1, 2, 56, preset="cpu")
    with pytest.raises(ValueError, match=r"expected input \(B, 1, \*\(56, 56\)\)"):
        net(torch.randn(1, 1, 63, 63))
