"""APF-UNETR on APF pseudo-images: shapes, padding mask in leaf order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.networks import APFUNETR
from monai_ext.transforms import quadtree_patch, quadtree_unpatch

TINY = dict(feature_size=4, hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2)


def _image_with_detail(size=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((1, size, size), np.float32)
    img[:, : size // 4, : size // 4] = rng.uniform(0, 255, (size // 4, size // 4))  # detail in one corner
    return img


@pytest.mark.parametrize("attention", ["softmax_free", "softmax", "sima"])
def test_apf_unetr_end_to_end_shapes(attention):
    img = _image_with_detail()
    grid, meta = quadtree_patch(img, patch_size=4, num_tokens=36, mode="fixed", min_size=4)
    assert not meta["mask"].all(), "the test needs padded leaves"
    net = APFUNETR(1, 3, num_tokens=36, patch_size=4, attention=attention, **TINY)
    x = torch.from_numpy(grid)[None]
    mask = torch.from_numpy(meta["mask"])[None]
    logits = net(x, mask)
    assert logits.shape == (1, 3, 24, 24)
    logits.mean().backward()
    full = quadtree_unpatch(logits[0].detach(), meta, argmax=True)
    assert tuple(full.shape[-2:]) == (64, 64)


def test_padded_leaves_are_masked_in_token_order():
    """Changing the pseudo-image pixels of padded leaves must not change real tokens' features."""
    torch.manual_seed(0)
    img = _image_with_detail()
    grid, meta = quadtree_patch(img, patch_size=4, num_tokens=36, mode="fixed", min_size=4)
    net = APFUNETR(1, 2, num_tokens=36, patch_size=4, **TINY).eval()
    x = torch.from_numpy(grid)[None]
    mask = torch.from_numpy(meta["mask"])[None]
    tok_mask = net.token_order(mask)
    x2 = x.clone().reshape(1, 1, 6, 4, 6, 4)  # (B, C, S, p, S, p)
    for t in torch.nonzero(~tok_mask[0]).flatten().tolist():
        x2[0, 0, t // 6, :, t % 6, :] = 99.0
    x2 = x2.reshape_as(x)
    f1, _ = net.unetr.vit.forward_features(x, tok_mask)
    f2, _ = net.unetr.vit.forward_features(x2, tok_mask)
    torch.testing.assert_close(f1[tok_mask], f2[tok_mask], atol=1e-5, rtol=1e-5)
    # and the mapping is the Z-curve: leaf 0 -> token 0, leaf 1 -> token 1, leaf 2 -> token S
    assert net.leaf_to_token[:4].tolist() == [0, 1, 6, 7]


def test_apf_unetr_bad_token_count():
    with pytest.raises(ValueError, match="perfect square"):
        APFUNETR(1, 2, num_tokens=20, patch_size=4, **TINY)


def test_apf_unetr_scripts():
    net = APFUNETR(1, 2, num_tokens=36, patch_size=4, **TINY).eval()
    x = torch.randn(1, 1, 24, 24)
    mask = torch.ones(1, 36, dtype=torch.bool)
    mask[0, -3:] = False
    ts = torch.jit.script(net)
    torch.testing.assert_close(ts(x, mask), net(x, mask), atol=1e-5, rtol=1e-5)
