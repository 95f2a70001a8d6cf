"""Tests of APF quadtree adaptive patching (monai_ext.transforms.apf, monai_ext.utils.zorder, monai_ext.metrics).

References used: a plain recursive quadtree and a heap-based greedy fixed-length tree written
here (the paper's definitions, one node at a time), explicit painting of leaf boxes, naive
block means, and real images (scikit-image's ihc.png, the CC0 Aperio file
``tests/data/cmu_small_region.svs``, committed).
"""

from __future__ import annotations

import heapq
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.metrics import upper_bound_dice
from monai_ext.transforms import (
    AdaptivePatch,
    AdaptivePatchd,
    AdaptiveUnpatch,
    AdaptiveUnpatchd,
    compute_edge_map,
    extract_patches,
    plan_quadtree,
    quadtree_patch,
    quadtree_unpatch,
    to_uint8_gray,
)
from monai_ext.transforms.apf import utils as apf_utils
from monai_ext.utils.zorder import grid_to_tokens, morton_encode, tokens_to_grid, zorder_grid, zorder_to_raster

REPO = Path(__file__).resolve().parents[1]
SVS = REPO / "tests" / "data" / "cmu_small_region.svs"  # committed copy (CC0, see its README)


# ----------------------------------------------------------------------------- references
def _zkey(y: int, x: int) -> int:
    """Morton code, bit by bit (independent of the vectorized one)."""
    code = 0
    for b in range(20):
        code |= ((x >> b) & 1) << (2 * b)
        code |= ((y >> b) & 1) << (2 * b + 1)
    return code


def ref_threshold_tree(edges, min_size, split_value=0, max_depth=99):
    n = edges.shape[0]
    leaves = []

    def visit(y, x, s, d):
        if edges[y : y + s, x : x + s].sum() > split_value and d < max_depth and s > min_size:
            h = s // 2
            for dy, dx in ((0, 0), (0, h), (h, 0), (h, h)):  # NW, NE, SW, SE
                visit(y + dy, x + dx, h, d + 1)
        else:
            leaves.append((y, x, s))

    visit(0, 0, n, 0)
    return np.array(leaves, dtype=np.int64)


def ref_fixed_tree(edges, num_tokens, min_size, split_value=0, max_depth=99):
    """Greedy: split the leaf with the most edge pixels (ties: shallower, then earlier in
    Z-order) while another split fits in num_tokens."""
    n = edges.shape[0]

    def entry(y, x, s, d):
        return (-int(edges[y : y + s, x : x + s].sum()), d, _zkey(y, x), y, x, s)

    leaves = {(0, 0, n, 0)}
    heap = [entry(0, 0, n, 0)]
    while heap and len(leaves) + 3 <= num_tokens:
        neg, d, _, y, x, s = heapq.heappop(heap)
        if -neg <= split_value or d >= max_depth or s <= min_size:
            continue
        leaves.remove((y, x, s, d))
        h = s // 2
        for dy, dx in ((0, 0), (0, h), (h, 0), (h, h)):
            leaves.add((y + dy, x + dx, h, d + 1))
            heapq.heappush(heap, entry(y + dy, x + dx, h, d + 1))
    out = sorted(leaves, key=lambda t: _zkey(t[0], t[1]))
    return np.array([(y, x, s) for y, x, s, _ in out], dtype=np.int64)


def paint(leaves, side):
    cover = np.zeros((side, side), dtype=np.int64)
    for y, x, s in leaves:
        cover[y : y + s, x : x + s] += 1
    return cover


def assert_tiles_in_zorder(meta):
    leaves = meta["leaves"][meta["mask"]]
    side = int(meta["padded_size"])
    # exact tiling: every pixel covered once
    np.testing.assert_array_equal(paint(leaves, side), 1)
    # Z-order: in units of the smallest leaf, leaf i covers the Morton interval
    # [code_i, code_i + (s_i / u)^2) and the intervals follow one another without gaps
    u = int(leaves[:, 2].min())
    codes = np.array([_zkey(y // u, x // u) for y, x, _ in leaves])
    ends = codes + (leaves[:, 2] // u) ** 2
    assert codes[0] == 0
    np.testing.assert_array_equal(codes[1:], ends[:-1])
    assert ends[-1] == (side // u) ** 2


def sparse_edges(rng, side, blobs=3):
    e = np.zeros((side, side), dtype=bool)
    for _ in range(blobs):
        y, x = rng.integers(0, side - 8, size=2)
        e[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
    e |= rng.random((side, side)) < 0.003
    return e


def chw(rgb):
    return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))


@pytest.fixture(scope="module")
def ihc():
    from skimage import data

    return chw(data.immunohistochemistry())


@pytest.fixture(scope="module")
def he_example():
    assert SVS.is_file(), f"committed SVS sample missing: {SVS}"
    spec = importlib.util.spec_from_file_location("apf_upper_bound", REPO / "scripts" / "apf_upper_bound.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, mod.he_example(SVS, 1024)


# ----------------------------------------------------------------------------- Z-order helpers
def test_morton_and_zorder_grid():
    assert [int(morton_encode(y, x)) for y, x in ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0))] == [0, 1, 2, 3, 4, 8]
    rows, cols = zorder_grid(4)
    expected = sorted(((y, x) for y in range(4) for x in range(4)), key=lambda t: _zkey(*t))
    assert list(zip(rows.tolist(), cols.tolist())) == expected
    rows, cols = zorder_grid(3)  # non power of two: Z-order of the enclosing 4x4 grid, cells inside only
    assert list(zip(rows.tolist(), cols.tolist())) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (0, 2),
        (1, 2),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    tokens = np.arange(9 * 2 * 2 * 2, dtype=np.float32).reshape(9, 2, 2, 2)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 6, 6)
    np.testing.assert_array_equal(grid[:, 2:4, 0:2], tokens[2])  # token 2 -> cell (1, 0)
    np.testing.assert_array_equal(grid_to_tokens(grid, 2), tokens)
    np.testing.assert_array_equal(grid_to_tokens(torch.from_numpy(grid), 2).numpy(), tokens)
    # raster order = the order of a patch embedding (Conv2d stride p + flatten) of the grid
    raster = zorder_to_raster(tokens)
    emb = torch.nn.functional.unfold(torch.from_numpy(grid)[None], kernel_size=2, stride=2)[0].T  # (9, C*p*p)
    np.testing.assert_array_equal(emb.numpy(), raster.reshape(9, -1))
    batched = torch.from_numpy(np.stack([tokens, tokens + 1]))
    torch.testing.assert_close(zorder_to_raster(batched, axis=1)[1], torch.from_numpy(raster + 1))


# ----------------------------------------------------------------------------- quadtree vs references
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("split_value,max_depth", [(0, None), (3, None), (0, 3)])
def test_threshold_mode_matches_recursive_reference(seed, split_value, max_depth):
    rng = np.random.default_rng(seed)
    edges = sparse_edges(rng, 64)
    meta = plan_quadtree(
        spatial_shape=(64, 64), edges=edges, patch_size=2, min_size=2, mode="threshold",
        split_value=split_value, max_depth=max_depth, layout="patches",
    )
    ref = ref_threshold_tree(edges, 2, split_value, 99 if max_depth is None else max_depth)
    np.testing.assert_array_equal(meta["leaves"], ref)
    assert meta["mask"].all() and meta["num_leaves"] == len(ref)
    assert_tiles_in_zorder(meta)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("num_tokens", [1, 4, 16, 49, 100])
def test_fixed_mode_matches_greedy_reference(seed, num_tokens):
    rng = np.random.default_rng(seed)
    if seed == 3:  # blocky map: many equal counts, exercises the tie-break
        edges = np.kron(rng.random((8, 8)) < 0.4, np.ones((8, 8), dtype=bool))
    else:
        edges = sparse_edges(rng, 64, blobs=6)
    meta = plan_quadtree(
        spatial_shape=(64, 64), edges=edges, patch_size=2, num_tokens=num_tokens, mode="fixed", min_size=2
    )
    ref = ref_fixed_tree(edges, num_tokens, 2)
    n = len(ref)
    assert meta["leaves"].shape == (num_tokens, 3) and meta["mask"].shape == (num_tokens,)
    assert meta["num_leaves"] == n and (n - 1) % 3 == 0 and n <= num_tokens
    np.testing.assert_array_equal(meta["leaves"][:n], ref)
    np.testing.assert_array_equal(meta["mask"], np.arange(num_tokens) < n)
    np.testing.assert_array_equal(meta["leaves"][n:], 0)
    assert_tiles_in_zorder(meta)


def test_fixed_mode_stops_when_nothing_can_split():
    edges = np.zeros((32, 32), dtype=bool)
    edges[5, 7] = True  # one edge pixel: only its ancestors can split
    meta = plan_quadtree(spatial_shape=(32, 32), edges=edges, patch_size=4, num_tokens=64, mode="fixed")
    assert meta["num_leaves"] == 1 + 3 * 3  # 32 -> 16 -> 8 -> 4
    np.testing.assert_array_equal(meta["leaves"][: meta["num_leaves"]], ref_fixed_tree(edges, 64, 4))
    meta = plan_quadtree(spatial_shape=(32, 32), edges=edges, patch_size=4, num_tokens=64, mode="fixed", max_depth=2)
    assert meta["num_leaves"] == 7


@pytest.mark.parametrize("mode", ["fixed", "threshold"])
def test_all_edge_map_equals_uniform(mode):
    rng = np.random.default_rng(0)
    img = rng.random((3, 64, 64)).astype(np.float32)
    kw = {"patch_size": 4, "num_tokens": (64 // 8) ** 2, "min_size": 8}
    uni, meta_u = quadtree_patch(img, mode="uniform", **kw)
    apf, meta_a = quadtree_patch(img, mode=mode, edges=np.ones((64, 64), bool), **kw)
    np.testing.assert_array_equal(meta_a["leaves"], meta_u["leaves"])
    np.testing.assert_array_equal(apf, uni)
    assert (meta_u["leaves"][:, 2] == 8).all() and meta_u["mask"].all()


def test_uniform_grid_is_the_area_downscaled_image():
    rng = np.random.default_rng(1)
    img = rng.random((2, 64, 64))  # float64: exact block means
    grid, meta = quadtree_patch(img, patch_size=2, mode="uniform", min_size=8)
    assert meta["num_leaves"] == 64 and grid.shape == (2, 16, 16) and grid.dtype == np.float64
    # 8x8 leaves -> 2x2 patches: the Z-curve grid is the image down-scaled by 4
    np.testing.assert_allclose(grid, img.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4)), rtol=0, atol=1e-12)


def test_patch_values_area_and_nearest():
    rng = np.random.default_rng(2)
    img = (rng.random((3, 64, 64)) * 255).astype(np.float32)
    lab = rng.integers(0, 4, size=(1, 64, 64)).astype(np.uint8)
    meta = plan_quadtree(img, patch_size=4, num_tokens=64, mode="fixed", edges=sparse_edges(rng, 64, 4))
    area = extract_patches(img, meta, "area", layout="patches")
    near = extract_patches(lab, meta, "nearest", layout="patches")
    assert near.dtype == np.uint8
    u8 = extract_patches(img.astype(np.uint8), meta, "area", layout="patches")
    np.testing.assert_array_equal(extract_patches(img, meta, "area", layout="grid"), tokens_to_grid(area))
    np.testing.assert_array_equal(extract_patches(lab, meta, "nearest", layout="grid"), tokens_to_grid(near))
    for i, (y, x, s) in enumerate(meta["leaves"]):
        if not meta["mask"][i]:
            assert not area[i].any() and not near[i].any()
            continue
        f = s // 4
        block = img[:, y : y + s, x : x + s].reshape(3, 4, f, 4, f)
        np.testing.assert_allclose(area[i], block.mean(axis=(2, 4)), rtol=1e-5)
        # 8-bit input: block mean within rounding (OpenCV INTER_AREA)
        ref8 = img.astype(np.uint8)[:, y : y + s, x : x + s].reshape(3, 4, f, 4, f).mean(axis=(2, 4))
        assert np.abs(u8[i] - ref8).max() <= 0.5 + 1e-4
        np.testing.assert_array_equal(near[i], lab[:, y + f // 2 : y + s : f, x + f // 2 : x + s : f])


# ----------------------------------------------------------------------------- tiling on real images
def test_tiling_on_random_and_real_images(ihc):
    rng = np.random.default_rng(3)
    rand = (rng.random((3, 128, 128)) > 0.97).astype(np.uint8) * 255
    for img in (rand, ihc):
        for kw in ({"mode": "fixed", "num_tokens": 400}, {"mode": "threshold", "split_value": 20, "layout": "patches"}):
            meta = plan_quadtree(img, patch_size=4, **kw)
            assert meta["num_leaves"] > 1
            assert_tiles_in_zorder(meta)


def test_tiling_on_svs_region(he_example):
    _, (image, _mask) = he_example
    meta = plan_quadtree(image, patch_size=4, num_tokens=1024, mode="fixed")
    assert meta["num_leaves"] == 1024
    assert_tiles_in_zorder(meta)
    assert len(np.unique(meta["leaves"][:, 2])) >= 3  # really adaptive: mixed leaf sizes


def test_tiling_non_square_image_is_padded_and_cropped():
    rng = np.random.default_rng(4)
    img = rng.random((1, 50, 37)).astype(np.float32)
    meta = plan_quadtree(img, patch_size=4, num_tokens=64, mode="fixed")
    assert int(meta["padded_size"]) == 64 and tuple(meta["spatial_shape"]) == (50, 37)
    assert_tiles_in_zorder(meta)
    # the padding holds no edges: a node entirely in the padded area is never split, so the
    # parent of every leaf lying entirely in the padding overlaps the real image
    leaves = meta["leaves"][meta["mask"]]
    outside = leaves[(leaves[:, 0] >= 50) | (leaves[:, 1] >= 37)]
    assert len(outside)
    for y, x, s in outside:
        py, px = y - y % (2 * s), x - x % (2 * s)
        assert py < 50 and px < 37, (y, x, s)


# ----------------------------------------------------------------------------- round trip / unpatch
@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 30, 21)])
def test_roundtrip_exact_at_minimum_size(shape):
    rng = np.random.default_rng(5)
    img = rng.random(shape).astype(np.float32)
    side = apf_utils.next_pow2(max(shape[1:]))
    grid, meta = quadtree_patch(
        img, patch_size=4, mode="fixed", num_tokens=(side // 4) ** 2, edges=np.ones(shape[1:], bool)
    )
    leaves = meta["leaves"][meta["mask"]]
    inside = (leaves[:, 0] < shape[1]) & (leaves[:, 1] < shape[2])
    assert (leaves[inside, 2] == 4).all()  # every leaf touching the image is at the minimum size
    rec = quadtree_unpatch(grid, meta)
    assert rec.shape == shape
    np.testing.assert_array_equal(rec, img)
    t = quadtree_unpatch(torch.from_numpy(grid), meta)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), img)


def test_unpatch_bilinear_constant_leaves_and_ignores_padding():
    rng = np.random.default_rng(6)
    meta = plan_quadtree(
        spatial_shape=(64, 64), edges=sparse_edges(rng, 64, 2), patch_size=4, num_tokens=100, mode="fixed"
    )
    n = meta["num_leaves"]
    assert n < 100
    tokens = np.zeros((100, 2, 4, 4), dtype=np.float32)
    tokens[:n, 0] = np.arange(n, dtype=np.float32)[:, None, None]  # channel 0: leaf index, constant per leaf
    tokens[:n, 1] = n // 2  # argmax: class 1 where the leaf index is below n // 2 (tie -> class 0)
    tokens[n:] = 1e6  # garbage in padding tokens
    rec = quadtree_unpatch(tokens, meta, layout="patches")
    expected = np.zeros((64, 64), np.float32)
    for i, (y, x, s) in enumerate(meta["leaves"][:n]):
        expected[y : y + s, x : x + s] = i
    np.testing.assert_array_equal(rec[0], expected)
    np.testing.assert_array_equal(rec[1], n // 2)
    lab = quadtree_unpatch(tokens, meta, layout="patches", argmax=True)
    assert lab.shape == (1, 64, 64)
    np.testing.assert_array_equal(lab[0], (expected < n // 2).astype(np.float32))
    grid = tokens_to_grid(tokens)
    np.testing.assert_array_equal(quadtree_unpatch(grid, meta), rec)
    thr = quadtree_unpatch(grid, meta, threshold=0.5)
    np.testing.assert_array_equal(thr[0], (expected > 0.5).astype(np.float32))


def test_unpatch_bilinear_matches_torch_per_leaf():
    rng = np.random.default_rng(7)
    meta = plan_quadtree(
        spatial_shape=(64, 64), edges=sparse_edges(rng, 64, 3), patch_size=4, num_tokens=49, mode="fixed"
    )
    tokens = torch.from_numpy(rng.random((49, 3, 4, 4)).astype(np.float32))
    rec = quadtree_unpatch(tokens, meta, layout="patches")
    for i, (y, x, s) in enumerate(meta["leaves"][: meta["num_leaves"]]):
        ref = torch.nn.functional.interpolate(
            tokens[i : i + 1], size=(int(s), int(s)), mode="bilinear", align_corners=False
        )[0]
        torch.testing.assert_close(rec[:, y : y + s, x : x + s], ref)
    # argmax: 2 classes go through the resized difference, K > 2 through max; both = argmax of rec
    two = quadtree_unpatch(tokens[:, :2], meta, layout="patches", argmax=True)
    assert (two[0] == rec[:2].argmax(0)).float().mean() > 0.999
    three = quadtree_unpatch(tokens, meta, layout="patches", argmax=True)
    torch.testing.assert_close(three[0], rec.argmax(0).float())


# ----------------------------------------------------------------------------- determinism / types
def test_determinism_and_input_types(ihc):
    from monai.data import MetaTensor

    a, meta_a = quadtree_patch(ihc, patch_size=4, num_tokens=256)
    b, meta_b = quadtree_patch(ihc.copy(), patch_size=4, num_tokens=256)
    np.testing.assert_array_equal(a, b)
    for k in ("leaves", "mask", "spatial_shape"):
        np.testing.assert_array_equal(meta_a[k], meta_b[k])
    c, meta_c = quadtree_patch(MetaTensor(torch.from_numpy(ihc)), patch_size=4, num_tokens=256)
    assert isinstance(c, MetaTensor) and c.shape == (3, 64, 64)
    np.testing.assert_array_equal(meta_c["leaves"], meta_a["leaves"])
    np.testing.assert_allclose(c.numpy(), a)


def test_edge_map_backends_and_gray():
    from skimage import data

    rgb = chw(data.immunohistochemistry())
    e_cv = compute_edge_map(rgb, backend="auto")
    e_sk = compute_edge_map(rgb, backend="skimage")
    assert e_cv.shape == e_sk.shape == (512, 512) and e_cv.dtype == bool
    assert 0.01 < e_cv.mean() < 0.5
    # the two Canny implementations differ in details (L1 vs L2 gradient), not in substance
    assert abs(e_cv.mean() - e_sk.mean()) / e_cv.mean() < 0.5
    # gray conversion: OpenCV luminance weights; CT window; float [0, 1]; constant image
    px = np.array([255, 0, 0], np.uint8).reshape(3, 1, 1)
    assert abs(int(to_uint8_gray(px)[0, 0]) - 76) <= 1
    rnd = np.random.default_rng(13).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    lum = np.tensordot([0.299, 0.587, 0.114], rnd.astype(np.float64), axes=1)
    assert np.abs(to_uint8_gray(rnd) - lum).max() <= 1.0
    assert np.abs(to_uint8_gray(rnd / 255.0) - lum).max() <= 0.5 + 1e-6  # float in [0, 1]: x 255, rounded
    ct = np.array([[[-1000.0, 40.0, 240.0, 3000.0]]], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8_gray(ct, window=(-160, 240)), [[0, 128, 255, 255]])
    np.testing.assert_array_equal(to_uint8_gray(np.full((1, 2, 2), 0.5)), 128)
    assert not compute_edge_map(np.full((1, 32, 32), 7.0)).any()
    with pytest.raises(ValueError, match="window"):
        to_uint8_gray(ct, window=(10, 10))


# ----------------------------------------------------------------------------- dictionary transforms
def test_dict_transforms_collate_decollate_roundtrip(ihc):
    from monai.data import MetaTensor, decollate_batch, list_data_collate

    samples = []
    for img in (ihc[:, :256, :256], ihc[:, 256:, 256:]):
        lab = (img[2:3] > 150).astype(np.uint8)
        samples.append({"image": MetaTensor(torch.from_numpy(img.copy())), "label": MetaTensor(torch.from_numpy(lab))})
    patch = AdaptivePatchd(("image", "label"), patch_size=4, num_tokens=256, interpolation=("area", "nearest"))
    out = [patch(s) for s in samples]
    assert out[0]["image"].shape == (3, 64, 64) and out[0]["label"].shape == (1, 64, 64)
    assert out[0]["image"].dtype == torch.float32 and out[0]["label"].dtype == torch.uint8
    assert not np.array_equal(out[0]["image_apf"]["leaves"], out[1]["image_apf"]["leaves"])
    batch = list_data_collate(out)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image_apf"]["leaves"].shape == (2, 256, 3)
    pred = batch["label"].float()  # a "prediction" in patch space
    batch["pred"] = torch.cat([1 - pred, pred], dim=1)
    unpatch = AdaptiveUnpatchd("pred", meta_key="image_apf", argmax=True)
    for i, item in enumerate(decollate_batch(batch)):
        res = unpatch(item)["pred"]
        assert res.shape == (1, 256, 256)
        direct = quadtree_unpatch(batch["pred"][i], out[i]["image_apf"], argmax=True)
        torch.testing.assert_close(torch.as_tensor(res), torch.as_tensor(direct))
        # where leaves are at the minimum size, the label comes back exactly
        meta = out[i]["image_apf"]
        small = meta["leaves"][meta["mask"] & (meta["leaves"][:, 2] == 4)]
        lab = samples[i]["label"].numpy()[0]
        for y, x, s in small[:50]:
            np.testing.assert_array_equal(res[0, y : y + s, x : x + s].numpy(), lab[y : y + s, x : x + s])


def test_dict_transform_precomputed_edges_and_patches_layout():
    rng = np.random.default_rng(9)
    img = rng.random((1, 64, 64)).astype(np.float32)
    edges = sparse_edges(rng, 64, 3)
    t = AdaptivePatchd("image", patch_size=4, num_tokens=40, edge_key="edges", layout="patches")
    d = t({"image": img, "edges": edges[None]})
    assert d["image"].shape == (40, 1, 4, 4)
    np.testing.assert_array_equal(
        d["image_apf"]["leaves"][: d["image_apf"]["num_leaves"]], ref_fixed_tree(edges, 40, 4)
    )
    back = AdaptiveUnpatchd("image", layout="patches")(d)["image"]
    assert back.shape == (1, 64, 64)


# ----------------------------------------------------------------------------- upper bound (issue 3)
def test_mask_upper_bound_apf_beats_uniform_on_svs(he_example):
    mod, (image, mask) = he_example
    assert image.shape == (3, 1024, 1024) and 0.05 < mask.mean() < 0.6
    res = mod.compare(image, mask, tokens=1024, patch_size=4, min_size=4)
    assert res["apf"]["leaves"] == res["uniform"]["leaves"] == 1024
    for interp in ("nearest", "area"):
        assert res["apf"][interp] > res["uniform"][interp] + 0.01, res
        assert 0.8 < res["uniform"][interp] < res["apf"][interp] < 0.97, res


def test_upper_bound_dice_is_one_at_minimum_size():
    rng = np.random.default_rng(10)
    lab = rng.integers(0, 3, size=(1, 32, 32))
    meta = plan_quadtree(spatial_shape=(32, 32), patch_size=4, mode="uniform", min_size=4)
    np.testing.assert_array_equal(upper_bound_dice(lab, meta), [1.0, 1.0])
    coarse = plan_quadtree(spatial_shape=(32, 32), patch_size=4, mode="uniform", min_size=16)
    d = upper_bound_dice(lab, coarse)
    assert d.shape == (2,) and (d < 0.9).all()


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    img = np.random.default_rng(11).random((1, 64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="perfect square"):
        quadtree_patch(img, patch_size=4, num_tokens=50, layout="grid")
    _, meta = quadtree_patch(img, patch_size=4, num_tokens=50, layout="patches")  # fine without the grid
    assert meta["leaves"].shape == (50, 3)
    with pytest.raises(ValueError, match="perfect square"):
        AdaptivePatchd("image", patch_size=4, num_tokens=50)
    with pytest.raises(ValueError, match="larger than the image"):
        quadtree_patch(np.zeros((1, 8, 8), np.float32), patch_size=16, num_tokens=4)
    with pytest.raises(ValueError, match="min_size"):
        quadtree_patch(img, patch_size=8, num_tokens=4, min_size=4)
    with pytest.raises(ValueError, match="power of two"):
        quadtree_patch(img, patch_size=6, num_tokens=4)
    nan = img.copy()
    nan[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quadtree_patch(nan, patch_size=4, num_tokens=16)
    with pytest.raises(ValueError, match="NaN"):
        quadtree_patch(nan, patch_size=4, mode="uniform", min_size=16)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        quadtree_patch(img[0], patch_size=4, num_tokens=16)
    with pytest.raises(ValueError, match="more than num_tokens"):
        quadtree_patch(img, patch_size=4, num_tokens=4, mode="uniform", min_size=4)
    with pytest.raises(ValueError, match="more than num_tokens"):
        quadtree_patch(img, patch_size=4, num_tokens=4, mode="threshold", edges=np.ones((64, 64)))
    with pytest.raises(ValueError, match="needs num_tokens"):
        quadtree_patch(img, patch_size=4, mode="fixed")
    with pytest.raises(ValueError, match="edge map shape"):
        quadtree_patch(img, patch_size=4, num_tokens=16, edges=np.ones((32, 64)))
    with pytest.raises(ValueError, match="mode"):
        quadtree_patch(img, patch_size=4, num_tokens=16, mode="random")
    with pytest.raises(ValueError, match="above the supported"):
        plan_quadtree(spatial_shape=(140000, 10), patch_size=4, mode="uniform", min_size=65536)


def test_image_without_edges_gives_one_leaf_plus_padding():
    img = np.full((3, 64, 64), 200, dtype=np.uint8)
    grid, meta = quadtree_patch(img, patch_size=4, num_tokens=16)
    assert meta["num_leaves"] == 1
    np.testing.assert_array_equal(meta["mask"], np.arange(16) == 0)
    np.testing.assert_array_equal(meta["leaves"][0], [0, 0, 64])
    np.testing.assert_array_equal(grid[:, :4, :4], 200.0)
    assert not grid[:, 4:, :].any() and not grid[:, :, 4:].any()
    np.testing.assert_array_equal(quadtree_unpatch(grid, meta), 200.0)
    _, meta_t = quadtree_patch(img, patch_size=4, num_tokens=16, mode="threshold")
    assert meta_t["num_leaves"] == 1 and meta_t["mask"].sum() == 1


def test_label_shape_mismatch_is_an_error():
    img = np.zeros((3, 64, 64), np.uint8)
    with pytest.raises(ValueError, match="'label' has shape"):
        AdaptivePatchd(("image", "label"), patch_size=4, num_tokens=16)({"image": img, "label": np.zeros((1, 64, 32))})
    _, meta = quadtree_patch(img, patch_size=4, num_tokens=16)
    with pytest.raises(ValueError, match="differs from the image"):
        extract_patches(np.zeros((1, 32, 32)), meta, "nearest")
    with pytest.raises(ValueError, match="tokens given"):
        quadtree_unpatch(np.zeros((2, 4 * 5, 4 * 5), np.float32), meta)


def test_pure_numpy_fallbacks_match_opencv_paths(ihc, monkeypatch):
    """Without OpenCV (edge backend skimage, numpy summed-area table, numpy block means) the
    tree and the patches are the same for the same edge map."""
    edges = compute_edge_map(ihc)
    img = ihc.astype(np.float32) / 255.0
    lab = (ihc[:1] > 128).astype(np.uint8)
    kw = {"patch_size": 4, "num_tokens": 400, "edges": edges}
    with_cv = quadtree_patch(img, **kw)
    gray_cv = to_uint8_gray(ihc)
    lab_cv = extract_patches(lab, with_cv[1], "nearest")
    monkeypatch.setattr(apf_utils, "HAS_CV2", False)
    without = quadtree_patch(img, **kw)
    np.testing.assert_array_equal(without[1]["leaves"], with_cv[1]["leaves"])
    np.testing.assert_allclose(without[0], with_cv[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(extract_patches(lab, without[1], "nearest"), lab_cv)
    assert np.abs(to_uint8_gray(ihc).astype(int) - gray_cv).max() <= 1
    assert compute_edge_map(ihc).mean() > 0.01  # skimage Canny
    with pytest.raises(ImportError, match="opencv"):
        compute_edge_map(ihc, backend="opencv")


def test_unpatch_rejects_batched_metadata():
    from monai.data import list_data_collate

    img = np.random.default_rng(12).random((1, 32, 32)).astype(np.float32)
    grid, meta = quadtree_patch(img, patch_size=4, num_tokens=16)
    batch = list_data_collate([{"m": meta}, {"m": meta}])
    with pytest.raises(ValueError, match="decollate|batched"):
        quadtree_unpatch(grid, batch["m"])


# ----------------------------------------------------------------------------- array transforms
def test_array_transforms_match_dictionary_ones_and_block_means(ihc):
    """``AdaptivePatch``: one plan, image (area) and label (nearest) patched with it, non-square image padded
    with ``pad_value``; checked against naive block means and the dictionary transforms."""
    img = ihc[:, :200, :256]
    lab = (img[2:3] > 150).astype(np.uint8)
    patch = AdaptivePatch(patch_size=4, num_tokens=400, pad_value=255)
    meta = patch.plan(img)
    grid = patch(img, meta)
    assert grid.shape == (3, 80, 80) and grid.dtype == np.float32
    padded = np.full((3, 256, 256), 255.0)
    padded[:, :200, :256] = img
    tokens = grid_to_tokens(grid, 4)
    for i in np.nonzero(meta["mask"])[0][::23]:
        y, x, s = meta["leaves"][i]
        block_mean = padded[:, y : y + s, x : x + s].reshape(3, 4, s // 4, 4, s // 4).mean(axis=(2, 4))
        np.testing.assert_allclose(tokens[i], block_mean, atol=0.5)  # OpenCV rounds uint8 area means
    lab_grid = patch(lab, meta, interpolation="nearest", pad_value=0)
    assert lab_grid.dtype == np.uint8
    d = AdaptivePatchd(("image", "label"), patch_size=4, num_tokens=400, interpolation=("area", "nearest"),
                       pad_value=(255, 0))({"image": img, "label": lab})
    np.testing.assert_array_equal(d["image"], grid)
    np.testing.assert_array_equal(d["label"], lab_grid)
    np.testing.assert_array_equal(patch(img), grid)  # no tree given: planned from the image
    logits = np.stack([1 - lab_grid[0], lab_grid[0]]).astype(np.float32)
    unpatch = AdaptiveUnpatch(argmax=True)
    back = unpatch(logits, meta)
    assert back.shape == (1, 200, 256)
    np.testing.assert_array_equal(back, AdaptiveUnpatchd("p", argmax=True)({"p": logits, "image_apf": meta})["p"])
    small = meta["leaves"][meta["mask"] & (meta["leaves"][:, 2] == 4)]
    for y, x, s in small[:40]:  # minimum-size leaves inside the image come back exactly
        if y + s <= 200:
            np.testing.assert_array_equal(back[0, y : y + s, x : x + s], lab[0, y : y + s, x : x + s])
    np.testing.assert_array_equal(unpatch(logits, meta, mode="nearest", argmax=False),
                                  quadtree_unpatch(logits, meta, mode="nearest"))
    with pytest.raises(ValueError, match="interpolation"):
        AdaptivePatch(patch_size=4, num_tokens=16, interpolation="bilinear")
    with pytest.raises(ValueError, match="perfect square"):
        AdaptivePatch(patch_size=4, num_tokens=50)
    with pytest.raises(ValueError, match="layout"):
        AdaptiveUnpatch(layout="tokens")
