"""APF-UNETR on APF pseudo-images: shapes, padding mask in leaf order, weight transfer; the networks' imports
point one way (no transforms, data, workflows, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.networks import APFUNETR
from monai_ext.transforms import quadtree_patch, quadtree_unpatch

TINY = {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 4, "num_layers": 2}


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


def test_transfer_weights_into_wrapped_apf_unetr():
    """Fine-tuning a softmax APF-UNETR into a softmax-free one inside ``DataParallel`` (as trained with DP / DDP):
    every shared tensor is copied, only the sequence-normalization parameters are new."""
    from monai_ext.utils.checkpoint import transfer_weights

    torch.manual_seed(0)
    src = APFUNETR(1, 2, num_tokens=36, patch_size=4, attention="softmax", **TINY)
    dst = torch.nn.DataParallel(APFUNETR(1, 2, num_tokens=36, patch_size=4, attention="softmax_free", **TINY))
    report = transfer_weights(dst, src.state_dict())
    new = dst.module.state_dict()
    assert report.copied and not report.unused and not report.mismatched
    assert set(report.copied) == set(src.state_dict()) and set(report.new) == set(new) - set(src.state_dict())
    assert report.new and all(".attn." in k and k.endswith(("_gamma", "_beta")) for k in report.new), report.new
    for k, v in src.state_dict().items():
        torch.testing.assert_close(new[k], v, rtol=0, atol=0)


REPO = Path(__file__).resolve().parents[1]
#: what may import what inside monai_ext (by top-level subpackage): networks and utils sit at the bottom
FORBIDDEN = {
    "monai_ext.networks": ("transforms", "data", "workflows", "reports", "inferers", "metrics", "bench", "cli",
                           "bundle_tools", "demo"),
    "monai_ext.utils": ("networks", "transforms", "data", "workflows", "reports", "inferers", "metrics", "bench",
                        "cli", "bundle_tools", "demo"),
}


def _imports_of(path: Path, module: str) -> set[str]:
    """monai_ext modules imported anywhere in ``path`` (also inside functions), with their parent packages."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in found if m.startswith("monai_ext")}


def test_networks_and_utils_import_nothing_above_them():
    """Import graph of monai_ext by AST (every import, also lazy ones inside functions), closed transitively:
    monai_ext.networks reaches no transforms / data / workflows / reports / ..., monai_ext.utils nothing of
    monai_ext above it. (Stricter than ``sys.modules`` after ``import monai_ext.networks``, which misses lazy
    imports and costs a fresh interpreter loading torch.)"""
    modules = {}
    for path in (REPO / "monai_ext").rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {m: {i for i in _imports_of(p, m) if i in modules} for m, p in modules.items()}
    for root, banned in FORBIDDEN.items():
        for start in (m for m in modules if m == root or m.startswith(root + ".")):
            seen, todo = set(), [start]
            while todo:
                m = todo.pop()
                if m not in seen:
                    seen.add(m)
                    todo.extend(graph[m])
            bad = sorted(m for m in seen if m.count(".") and m.split(".")[1] in banned)
            assert not bad, f"{start} imports (directly or through others) {bad}"


def test_apf_inferer_volumes_slice_by_slice():
    """``APFInferer`` on two volumes (SliceInferer over the last axis, mini-batches that span both volumes) equals
    APF-UNETR run on every slice alone; 2D batches likewise; the workflows name is the same class."""
    import monai_ext.workflows
    from monai_ext.inferers import APFInferer

    assert monai_ext.workflows.APFInferer is APFInferer
    torch.manual_seed(0)
    net = APFUNETR(1, 3, num_tokens=16, patch_size=4, **TINY).eval()
    vol = torch.rand(2, 1, 20, 28, 3) * 255
    inf = APFInferer(patch_size=4, num_tokens=16, batch_size=4)
    with torch.no_grad():
        out, out2d = inf(vol, net), inf(vol[..., 1], net)
        assert out.shape == (2, 3, 20, 28, 3) and out2d.shape == (2, 3, 20, 28)
        for b in range(2):
            for z in range(3):
                grid, meta = quadtree_patch(vol[b, ..., z].numpy(), patch_size=4, num_tokens=16)
                logits = net(torch.from_numpy(grid)[None], torch.from_numpy(meta["mask"])[None])
                ref = quadtree_unpatch(logits[0], meta)
                torch.testing.assert_close(out[b, ..., z], ref, atol=1e-5, rtol=1e-5)
                if z == 1:
                    torch.testing.assert_close(out2d[b], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="perfect square"):
        APFInferer(patch_size=4, num_tokens=20)  # checked when the inferer is built, not on the first volume
