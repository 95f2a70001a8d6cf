"""ViT and UNETR: shapes, gradients, bad input, weight transfer, export, and learning."""

from __future__ import annotations

import pytest
import torch

from monai_ext.demo import train_demo
from monai_ext.networks import UNETR, VIT_PRESETS, ViT, transfer_weights, vit_preset

TYPES = ["softmax", "softmax_free", "sima"]
TINY = dict(hidden_size=32, mlp_dim=64, num_heads=4)


@pytest.mark.parametrize("attention", TYPES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vit_forward_backward(attention, spatial_dims):
    img = (32, 32) if spatial_dims == 2 else (32, 32, 8)
    patch = 8 if spatial_dims == 2 else (8, 8, 4)
    m = ViT(1, img, patch, num_layers=2, spatial_dims=spatial_dims, classification=True, num_classes=3,
            attention=attention, **TINY)
    x = torch.randn(2, 1, *img)
    y = m(x)
    assert y.shape == (2, 3)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    tokens, hidden = m.forward_features(x)
    assert tokens.shape == (2, 1 + m.num_patches, 32) and len(hidden) == 2


@pytest.mark.parametrize("attention", TYPES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unetr_forward_backward(attention, spatial_dims):
    img = (32, 32) if spatial_dims == 2 else (16, 16, 16)
    m = UNETR(1, 4, img, patch_size=4, feature_size=4, num_layers=4, spatial_dims=spatial_dims,
              attention=attention, **TINY)
    x = torch.randn(2, 1, *img)
    y = m(x)
    assert y.shape == (2, 4, *img)
    y.mean().backward()
    assert m.vit.patch_embedding.patch_embeddings.weight.grad is not None


def test_unetr_mask_ignores_padded_tokens():
    """Padded tokens' content must not change real tokens' features in the transformer."""
    torch.manual_seed(0)
    m = UNETR(1, 2, (16, 16), patch_size=4, feature_size=4, num_layers=2, spatial_dims=2, **TINY).eval()
    x = torch.randn(1, 1, 16, 16)
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[0, -4:] = False  # the last token row is padding
    x2 = x.clone()
    x2[..., 12:, :] = 50.0  # change only the padded tokens' pixels
    t1, _ = m.vit.forward_features(x, mask)
    t2, _ = m.vit.forward_features(x2, mask)
    torch.testing.assert_close(t1[:, :12], t2[:, :12], atol=1e-5, rtol=1e-5)


def test_unetr_patch16_uses_layers_3_6_9():
    m = UNETR(1, 2, (32, 32), patch_size=16, feature_size=4, num_layers=12, spatial_dims=2, **TINY)
    assert m.skip_layer_ids == [8, 5, 2]
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=(30, 32), patch_size=8), "not divisible by patch_size"),
        (dict(img_size=(32, 32, 32), patch_size=8), "spatial_dims=2"),
        (dict(img_size=(32, 32), patch_size=8, spatial_dims=4), "spatial_dims must be 2 or 3"),
        (dict(img_size=(32, 32), patch_size=8, attention="nystromformer"), "registered attention types"),
        (dict(img_size=(32, 32), patch_size=8, hidden_size=30, num_heads=4), "divisible by num_heads"),
    ],
)
def test_vit_bad_arguments(kwargs, match):
    args = dict(in_channels=1, spatial_dims=2, hidden_size=32, mlp_dim=64, num_heads=4, num_layers=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ViT(**args)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_vit_pooling_against_tokens(pooling):
    """The head sees the class token, the mean or the feature-wise max of the real patch tokens
    (padding excluded), computed here from ``forward_features`` by hand."""
    torch.manual_seed(0)
    m = ViT(1, (32, 32), 8, num_layers=1, spatial_dims=2, classification=True, num_classes=3, pooling=pooling,
            **TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        tokens, _ = m.forward_features(x, mask)
        pooled = []
        for b in range(2):
            real = tokens[b, 1:][mask[b]]
            pooled.append({"cls": tokens[b, 0], "mean": real.mean(0), "max": real.max(0).values}[pooling])
        torch.testing.assert_close(m(x, mask), m.classification_head(torch.stack(pooled)))
    with pytest.raises(ValueError, match="pooling must be"):
        ViT(1, (32, 32), 8, num_layers=1, spatial_dims=2, classification=True, pooling="sum", **TINY)


def test_vit_layer_scale():
    """``layer_scale``: each residual branch times a learnable per-channel factor; with a tiny factor a
    block is close to the identity, with 1.0 it equals the plain block; bad values are refused."""
    torch.manual_seed(0)
    plain = ViT(1, (32, 32), 8, num_layers=2, spatial_dims=2, **TINY).eval()
    one = ViT(1, (32, 32), 8, num_layers=2, spatial_dims=2, layer_scale=1.0, **TINY).eval()
    report = transfer_weights(one, plain.state_dict())
    assert sorted(report.new) == [f"blocks.{i}.ls{j}.gamma" for i in range(2) for j in (1, 2)]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(one(x), plain(x))
        tiny = ViT(1, (32, 32), 8, num_layers=2, spatial_dims=2, layer_scale=1e-6, **TINY).eval()
        emb = tiny.patch_embedding(x)
        tokens, _ = tiny.forward_features(x)
        torch.testing.assert_close(tokens, tiny.norm(emb), atol=1e-4, rtol=1e-4)
    for bad in (0.0, -1.0, "null", True):  # "null": a bundle command-line value that is not None
        with pytest.raises(ValueError, match="layer_scale"):
            ViT(1, (32, 32), 8, num_layers=1, spatial_dims=2, layer_scale=bad, **TINY)


def test_vit_bad_input_shape():
    m = ViT(1, (32, 32), 8, num_layers=1, spatial_dims=2, **TINY)
    with pytest.raises(ValueError, match="expected input"):
        m(torch.randn(1, 1, 32, 16))


def test_unetr_bad_patch():
    with pytest.raises(ValueError, match="power of two"):
        UNETR(1, 2, (24, 24), patch_size=3, spatial_dims=2, **TINY)
    with pytest.raises(ValueError, match="isotropic"):
        UNETR(1, 2, (32, 32, 16), patch_size=(16, 16, 4), spatial_dims=3, **TINY)


def test_presets_follow_paper_table1():
    p2, p3 = VIT_PRESETS["paper_2d"], VIT_PRESETS["paper_3d"]
    assert (p2["patch_size"], p2["num_layers"], p2["num_heads"], p2["mlp_dim"], p2["in_channels"]) == (
        16,
        8,
        8,
        1024,
        3,
    )
    assert (p3["patch_size"], p3["num_layers"], p3["num_heads"], p3["mlp_dim"], p3["in_channels"]) == (
        (16, 16, 4),
        8,
        8,
        1024,
        1,
    )
    m = ViT(img_size=(64, 64, 16), classification=True, **vit_preset("tiny_3d"))
    assert m(torch.randn(1, 1, 64, 64, 16)).shape == (1, 2)
    with pytest.raises(ValueError, match="available"):
        vit_preset("huge")


def test_transfer_softmax_checkpoint_into_softmax_free(tmp_path):
    """The paper's Sec. 3.4: every shared weight copied, sequence-norm parameters new at 1/0."""
    torch.manual_seed(0)
    kw = dict(in_channels=1, img_size=(32, 32), patch_size=8, num_layers=2, spatial_dims=2, classification=True, **TINY)
    src = ViT(attention="softmax", **kw)
    path = tmp_path / "softmax.pt"
    torch.save({"network": src.state_dict()}, path)  # MONAI CheckpointSaver layout
    dst = ViT(attention="softmax_free", **kw)
    report = transfer_weights(dst, str(path))
    assert set(report.copied) == set(src.state_dict())
    assert report.new and all(n.rsplit(".", 1)[-1] in {f"{a}_{b}" for a in "qkv" for b in ("gamma", "beta")}
                              for n in report.new)
    assert not report.unused and not report.mismatched
    for name, t in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[name], t)
    assert torch.all(dst.blocks[0].attn.q_gamma == 1) and torch.all(dst.blocks[0].attn.v_beta == 0)
    bigger = ViT(attention="softmax_free", **{**kw, "hidden_size": 64})
    with pytest.raises(ValueError, match="shape"):
        transfer_weights(bigger, src.state_dict())


@pytest.mark.parametrize("attention", TYPES)
def test_torchscript_and_onnx_match_eager(attention, tmp_path):
    import onnxruntime as ort  # test extra (scripts/setup.sh test): a missing install fails, never skips
    torch.manual_seed(0)
    nets = {
        "vit3d": (ViT(1, (32, 32, 8), (8, 8, 4), num_layers=2, spatial_dims=3, classification=True,
                      attention=attention, **TINY), (2, 1, 32, 32, 8)),
        "unetr2d": (UNETR(1, 3, (32, 32), patch_size=4, feature_size=4, num_layers=2, spatial_dims=2,
                          attention=attention, **TINY), (2, 1, 32, 32)),
    }
    for name, (net, shape) in nets.items():
        net.eval()
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = net(x)
            ts = torch.jit.script(net)
            torch.testing.assert_close(ts(x), ref, atol=1e-4, rtol=1e-4)
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
        out = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
        assert abs(out - ref.numpy()).max() < 1e-3, name


def test_vit_learns_synthetic_task():
    """A real learning test: the disc-radius task is at 50% by chance; a trained ViT is far above."""
    result = train_demo("softmax_free", steps=60, lr=2e-3, progress=False)
    assert result["test_accuracy"] > 0.75, result


def test_compare_state_dict_unwrap_and_transfer_summary():
    """The helpers behind checkpoint checks (verify, evaluation reports) and transfer_weights' one-line report:
    blind spots found by mutation testing."""
    from monai_ext.utils.checkpoint import TransferReport, compare_state_dict, unwrap

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    expected = net.state_dict()
    assert compare_state_dict(dict(expected), expected).ok
    state = {k: v for k, v in expected.items() if k != "1.bias"}
    state["0.weight"] = torch.zeros(5, 3)
    state["extra"] = torch.zeros(1)
    state["step"] = 3  # not a tensor: no shape to compare
    diff = compare_state_dict(state, expected)
    assert not diff.ok
    assert diff.missing == ["1.bias"] and diff.unexpected == ["extra", "step"]
    assert diff.shapes == ["0.weight: checkpoint (5, 3) vs network (4, 3)"]
    assert not compare_state_dict({k: v for k, v in expected.items() if k != "0.bias"}, expected).ok
    wrapped = torch.nn.DataParallel(torch.nn.DataParallel(net))
    assert unwrap(wrapped) is net and unwrap(net) is net
    report = TransferReport(copied=["a.w", "b.w"], new=["x.q_gamma", "y.q_gamma", "y.k_beta"], unused=["u"])
    assert report.summary() == "copied 2 tensors, initialized 3 new (k_beta, q_gamma), 1 unused, 0 shape-mismatched"
    assert TransferReport().summary() == "copied 0 tensors, initialized 0 new (none), 0 unused, 0 shape-mismatched"
