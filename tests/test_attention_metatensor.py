"""Attention on MONAI ``MetaTensor`` inputs, as bundles feed them (``LoadImaged`` -> network).

A ``MetaTensor`` rejects some tensor-factory call forms that a plain tensor accepts (``x.new_empty(a, b, c)``
without a tuple raised inside the softmax-free fold and broke every bundle run), so each registered attention is
run on a ``MetaTensor`` and compared with the same input as a plain tensor, at N below and above the hidden size.
Every type gets the tokens' grid (``window`` needs it; the others ignore it).
"""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_ext.networks import ViT
from monai_ext.networks.attention import ATTENTION_REGISTRY, build_attention


@pytest.mark.parametrize("name", sorted(ATTENTION_REGISTRY))
@pytest.mark.parametrize("tokens", [8, 80])
def test_attention_accepts_metatensor(name: str, tokens: int) -> None:
    torch.manual_seed(0)
    attn = build_attention(name, hidden_size=32, num_heads=4).eval()
    x = torch.randn(2, tokens, 32)
    mask = torch.ones(2, tokens, dtype=torch.bool)
    mask[1, tokens // 2:] = False
    grid = [2, tokens // 2]
    with torch.no_grad():
        ref = attn(x, mask, grid)
        out = attn(MetaTensor(x.clone()), mask, grid)
    torch.testing.assert_close(torch.as_tensor(out), ref)


def test_vit_on_metatensor_image() -> None:
    torch.manual_seed(0)
    net = ViT(in_channels=1, img_size=(32, 32), patch_size=4, spatial_dims=2, hidden_size=32, mlp_dim=64,
              num_layers=1, num_heads=4, classification=True, num_classes=2, attention="softmax_free").eval()
    img = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(net(MetaTensor(img.clone()))), net(img))
