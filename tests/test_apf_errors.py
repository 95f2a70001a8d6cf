"""APF argument checks (each error names the problem, raised before any work) and the less used paths of
planning, patching and unpatching, against plain references (blind spots found by mutation testing of the APF
functions, see docs/testing.md)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from monai_ext.transforms import extract_patches, plan_quadtree, quadtree_patch, quadtree_unpatch
from monai_ext.transforms.apf.quadtree import meta_values
from monai_ext.utils.zorder import grid_side, grid_to_tokens, tokens_to_grid, zorder_grid, zorder_to_raster

IMG = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)


EDGE = np.zeros((32, 32), bool)
EDGE[3, 3] = True  # one edge pixel: splits 32 -> 16 -> 8 -> 4 around it, 10 leaves


@pytest.mark.parametrize("kwargs,message", [
    (dict(layout="rows"), "layout must be 'grid' or 'patches', got 'rows'."),
    (dict(num_tokens=0), "num_tokens must be >= 1, got 0."),
    (dict(max_depth=-1), "max_depth must be >= 0, got -1."),
    (dict(min_size=12), "min_size must be a power of two >= patch_size=4 (leaves are never up-sampled), got 12."),
    (dict(patch_size=64), "patch_size=64 / min_size=64 is larger than the image (32 x 32, padded to 32 x 32)."),
    (dict(min_size=64), "patch_size=4 / min_size=64 is larger than the image"),
    (dict(image=None), "plan_quadtree needs an image, an edge map or a spatial_shape."),
    (dict(image=None, spatial_shape=(32, 32), mode="threshold"),
     "mode='threshold' needs the image (or a precomputed edge map)."),
    (dict(edges=np.ones((2, 32, 32))), "edge map shape (2, 32, 32) differs from the image's spatial shape (32, 32)."),
    (dict(mode="threshold", num_tokens=None, edges=EDGE),
     "mode='threshold' produced 10 leaves; the 'grid' layout needs num_tokens, a perfect square >= 10 (e.g. 16)."),
])
def test_plan_quadtree_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        plan_quadtree(**{"image": IMG, "patch_size": 4, "num_tokens": 16, **kwargs})


def test_plan_quadtree_shapes_from_edges_and_default_sizes():
    edges = np.zeros((1, 24, 20), np.uint8)  # (1, H, W) edge map, no image: the shape comes from the edges
    edges[0, 2, 3] = 7  # any nonzero value is an edge
    meta = plan_quadtree(patch_size=4, num_tokens=16, edges=edges)
    assert tuple(meta["spatial_shape"]) == (24, 20) and meta["padded_size"] == 32 and meta["patch_size"] == 4
    # the one edge pixel: 32 -> 16 -> 8 -> 4 around it, 10 leaves, the rest padding
    np.testing.assert_array_equal(meta["leaves"][:4], [[0, 0, 4], [0, 4, 4], [4, 0, 4], [4, 4, 4]])
    assert meta["num_leaves"] == 10 and meta["mask"].sum() == 10 and meta["leaves"].dtype == np.int64
    thr = plan_quadtree(patch_size=4, edges=edges, mode="threshold", layout="patches")  # L = leaf count
    assert thr["leaves"].shape == (10, 3) and thr["mask"].all()
    uni = plan_quadtree(spatial_shape=(16, 16), patch_size=4, mode="uniform")  # min_size defaults to patch_size
    assert uni["num_leaves"] == 16 and (uni["leaves"][:, 2] == 4).all()
    deep = plan_quadtree(spatial_shape=(16, 16), patch_size=4, mode="uniform", max_depth=0)  # uniform ignores it
    assert deep["num_leaves"] == 16


def test_zorder_helper_errors():
    with pytest.raises(ValueError, match=r"^grid side must be >= 1, got 0\.$"):
        zorder_grid(0)
    with pytest.raises(ValueError, match=re.escape("num_tokens=10 is not a perfect square: the 'grid' layout needs "
                                                   "L = S*S tokens (e.g. 9 or 16); use layout='patches'")):
        grid_side(10)
    assert grid_side(1) == 1 and grid_side(49) == 7
    assert [a.tolist() for a in zorder_grid(1)] == [[0], [0]]  # a one-token grid
    for dtype in (np.uint8, np.float32):  # the grid keeps the tokens' dtype
        assert tokens_to_grid(np.ones((1, 2, 3, 3), dtype)).dtype == dtype
    with pytest.raises(ValueError, match=re.escape("tokens must be (L, C, p, p), got (4, 1, 2, 3).")):
        tokens_to_grid(np.zeros((4, 1, 2, 3)))
    for bad in (np.zeros((1, 4, 6)), np.zeros((4, 4)), np.zeros((1, 6, 6))):
        with pytest.raises(ValueError, match=r"^grid must be \(C, S\*p, S\*p\) with p=4, got"):
            grid_to_tokens(bad, 4)
    tokens = torch.arange(4 * 2 * 2 * 2, dtype=torch.float32).reshape(4, 2, 2, 2)
    grid = tokens_to_grid(tokens)  # torch in, torch out, same as numpy
    assert isinstance(grid, torch.Tensor)
    np.testing.assert_array_equal(grid.numpy(), tokens_to_grid(tokens.numpy()))
    np.testing.assert_array_equal(zorder_to_raster(np.arange(4)), [0, 1, 2, 3])
    np.testing.assert_array_equal(zorder_to_raster(np.arange(16))[:8], [0, 1, 4, 5, 2, 3, 6, 7])


def test_patch_and_unpatch_argument_errors():
    grid, meta = quadtree_patch(IMG, patch_size=4, num_tokens=16)
    with pytest.raises(ValueError, match=r"^interpolation must be 'area' or 'nearest', got 'cubic'\.$"):
        extract_patches(IMG, meta, "cubic")
    with pytest.raises(ValueError, match=r"^layout must be 'grid' or 'patches', got 'rows'\.$"):
        extract_patches(IMG, meta, layout="rows")
    with pytest.raises(ValueError, match=r"^layout must be 'grid' or 'patches', got 'rows'\.$"):
        quadtree_unpatch(grid, meta, layout="rows")
    with pytest.raises(ValueError, match=re.escape("grid layout expects (K, S*p, S*p), got (1, 1, 16, 16).")):
        quadtree_unpatch(grid[None], meta)
    with pytest.raises(ValueError, match=re.escape("patches layout expects (L, K, 4, 4), got (16, 1, 4, 2).")):
        quadtree_unpatch(np.zeros((16, 1, 4, 2), np.float32), meta, layout="patches")
    with pytest.raises(ValueError, match=re.escape("patches layout expects (L, K, 4, 4), got (16, 4, 4).")):
        quadtree_unpatch(np.zeros((16, 4, 4), np.float32), meta, layout="patches")
    with pytest.raises(KeyError, match="APF metadata misses 'mask'; expected the dict returned by plan_quadtree"):
        meta_values({k: v for k, v in meta.items() if k != "mask"})
    with pytest.raises(ValueError, match=re.escape("leaves (L, 3) and mask (L,), got (16, 3) and (15,)")):
        meta_values({**meta, "mask": meta["mask"][:15]})
    with pytest.raises(ValueError, match=re.escape("leaves (L, 3) and mask (L,), got (16, 2) and (16,)")):
        meta_values({**meta, "leaves": meta["leaves"][:, :2]})
    leaves, mask, h, w, side, p = meta_values({**meta, "leaves": meta["leaves"].tolist(), "padded_size": [32]})
    assert leaves.dtype == np.int64 and mask.dtype == bool and (h, w, side, p) == (32, 32, 32, 4)


def test_unpatch_modes_crop_and_integer_tokens():
    rng = np.random.default_rng(1)
    img = rng.random((1, 24, 20)).astype(np.float32)
    edges = np.zeros((24, 20), bool)
    edges[5, 5] = True
    tokens, meta = quadtree_patch(img, patch_size=2, num_tokens=16, edges=edges, layout="patches")
    n = meta["num_leaves"]
    t = torch.from_numpy(rng.random((16, 3, 2, 2)).astype(np.float32))
    full = quadtree_unpatch(t, meta, layout="patches", mode="bicubic", crop=False)
    assert full.shape == (3, 32, 32)
    for i, (y, x, s) in enumerate(meta["leaves"][:n]):  # each leaf: torch's bicubic resize of its token
        ref = torch.nn.functional.interpolate(t[i : i + 1], size=(int(s), int(s)), mode="bicubic",
                                              align_corners=False)[0]
        torch.testing.assert_close(full[:, y : y + s, x : x + s], ref)
    torch.testing.assert_close(quadtree_unpatch(t, meta, layout="patches", mode="bicubic"), full[:, :24, :20])
    near = quadtree_unpatch(t, meta, layout="patches", mode="nearest-exact")
    for i, (y, x, s) in enumerate(meta["leaves"][:n]):
        ref = torch.nn.functional.interpolate(t[i : i + 1], size=(int(s), int(s)), mode="nearest-exact")[0]
        torch.testing.assert_close(near[:, y : min(y + s, 24), x : min(x + s, 20)],
                                   ref[:, : min(s, 24 - y), : min(s, 20 - x)])
    ints = quadtree_unpatch(np.full((16, 1, 2, 2), 3, np.int64), meta, layout="patches")  # integer logits
    assert ints.dtype == np.float32 and (ints == 3).all()
    thr = quadtree_unpatch(t.numpy(), meta, layout="patches", mode="bicubic", threshold=0.5, crop=False)
    np.testing.assert_array_equal(thr, (full.numpy() > 0.5).astype(np.float32))


def test_unpatch_with_autograd_matches_and_passes_gradients():
    """Tokens that require grad (training through unpatching) take the index_put path: same values, and every
    real token gets the gradient of the pixels it covers (its box area / p^2 per element for a constant resize)."""
    rng = np.random.default_rng(2)
    edges = np.zeros((24, 20), bool)
    edges[5, 5] = True
    _, meta = quadtree_patch(rng.random((1, 24, 20)).astype(np.float32), patch_size=2, num_tokens=16, edges=edges,
                             layout="patches")
    t = torch.from_numpy(rng.random((16, 3, 2, 2)).astype(np.float32))
    for kw in (dict(), dict(mode="nearest", crop=False), dict(argmax=True), dict(threshold=0.5)):
        ref = quadtree_unpatch(t, meta, layout="patches", **kw)
        got = quadtree_unpatch(t.clone().requires_grad_(True), meta, layout="patches", **kw)
        torch.testing.assert_close(got.detach(), ref, rtol=0, atol=1e-6)
    g = t.clone().requires_grad_(True)
    quadtree_unpatch(g, meta, layout="patches", mode="nearest", crop=False).sum().backward()
    n = meta["num_leaves"]
    sizes = torch.as_tensor(meta["leaves"][:n, 2], dtype=torch.float32)
    torch.testing.assert_close(g.grad[:n], ((sizes / 2) ** 2)[:, None, None, None].expand(n, 3, 2, 2))
    assert not g.grad[n:].any()  # padding tokens are ignored


def test_padding_value_and_threshold_edge():
    img = np.ones((1, 20, 32), np.float32)
    grid, meta = quadtree_patch(img, patch_size=4, mode="uniform", min_size=8, layout="patches")
    rows = meta["leaves"][:, 0]
    assert (grid[rows >= 24] == 0).all() and (grid[rows < 16] == 1).all()  # padding rows count as 0 by default
    edge = grid[rows == 16]  # leaves over rows 16..23: image rows 16..19 on top, padding below
    assert (edge[:, :, :2] == 1).all() and (edge[:, :, 2:] == 0).all()
    padded, _ = quadtree_patch(img, patch_size=4, mode="uniform", min_size=8, layout="patches", pad_value=3.0)
    assert (padded[rows >= 24] == 3).all()
    thr = quadtree_unpatch(np.full((len(rows), 1, 4, 4), 0.5, np.float32), meta, layout="patches", threshold=0.5)
    assert not thr.any()  # strictly above the threshold
