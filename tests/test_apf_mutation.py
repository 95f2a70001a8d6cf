"""APF planning, Z-order and patching paths left open by mutation testing (scripts/mutation_test.sh apf, see
docs/testing.md): the edge parameters reaching the edge step, the size limits at their bounds, the early
``num_tokens`` checks, error messages and the debug log line, Morton codes of large coordinates, ``plan_settings``
and ``plan_from_counts`` called directly, ties of the fixed-mode ranking. References: the edge map with explicit
parameters, sizes and messages worked out by hand, a bit-by-bit Morton loop, the greedy one-split-at-a-time tree."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from monai_ext.transforms import compute_edge_map, plan_quadtree
from monai_ext.transforms.apf.quadtree import MAX_SIDE, plan_from_counts, plan_settings
from monai_ext.utils.zorder import morton_encode


def test_default_edge_parameters(monkeypatch):
    """The documented defaults reach the edge step: blur 3, Canny 100 / 200, no window, backend 'auto'
    (Canny magnitudes at exactly 101 or 201 are too rare on test images to tell 100 from 101 by the plan)."""
    from monai_ext.transforms.apf import quadtree

    calls = []

    def spy(image: np.ndarray, *args: object) -> np.ndarray:
        calls.append(args)
        return edges01(image, *args)

    edges01 = quadtree.edges01
    monkeypatch.setattr(quadtree, "edges01", spy)
    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32)).astype(np.uint8)
    meta = plan_quadtree(img, patch_size=4, mode="threshold", layout="patches")
    assert calls == [(3, 100.0, 200.0, None, "auto")]
    ref = plan_quadtree(edges=compute_edge_map(img, 3, 100.0, 200.0), patch_size=4, mode="threshold", layout="patches")
    np.testing.assert_array_equal(meta["leaves"], ref["leaves"])
    # and the given ones, each passed through
    hu = np.linspace(-500.0, 500.0, 32 * 32).reshape(1, 32, 32)
    plan_quadtree(hu, patch_size=4, num_tokens=16, blur_kernel=5, canny_low=50.0, canny_high=150.0,
                  window=(-100.0, 100.0), edge_backend="skimage")
    assert calls[1] == (5, 50.0, 150.0, (-100.0, 100.0), "skimage")


@pytest.mark.parametrize("mode", ["threshold", "uniform"])
def test_a_non_finite_image_is_named(mode):
    img = np.zeros((1, 16, 16), np.float32)
    img[0, 3, 4] = np.nan
    message = "image contains NaN or infinite values: APF patching needs a finite image."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        plan_quadtree(img, patch_size=4, mode=mode, layout="patches")


def test_sizes_at_their_limits_are_allowed():
    # patch_size / min_size equal to the padded side: one leaf; the largest supported side
    for kwargs in (dict(patch_size=32), dict(patch_size=4, min_size=32)):
        meta = plan_quadtree(spatial_shape=(32, 20), mode="uniform", layout="patches", **kwargs)
        np.testing.assert_array_equal(meta["leaves"], [[0, 0, 32]])
    big = MAX_SIDE
    meta = plan_quadtree(spatial_shape=(big, 9000), patch_size=4, min_size=big, mode="uniform", layout="patches")
    assert meta["padded_size"] == big and meta["num_leaves"] == 1
    message = f"image of {big + 1} x 2 pads to {2 * big} x {2 * big}, above the supported {big} x {big}."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        plan_quadtree(spatial_shape=(big + 1, 2), patch_size=4, mode="uniform")


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_tokens=10), "num_tokens=10 is not a perfect square: the 'grid' layout needs L = S*S tokens "
                          "(e.g. 9 or 16); use layout='patches' for other lengths."),
    (dict(num_tokens=None), "mode='fixed' needs num_tokens (the sequence length L)."),
    (dict(image=np.zeros((32, 32))), "image: expected a channel-first 2D image (C, H, W), got shape (32, 32)."),
])
def test_early_argument_errors_name_the_problem(kwargs, message):
    edges = np.zeros((32, 32), bool)
    edges[3, 3] = True
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        plan_quadtree(**{"image": np.zeros((1, 32, 32)), "edges": edges, "patch_size": 4, **kwargs})
    if "num_tokens" in kwargs and kwargs["num_tokens"]:  # any length with layout='patches'
        meta = plan_quadtree(edges=edges, patch_size=4, num_tokens=10, layout="patches")
        assert meta["num_leaves"] == 10 and meta["mask"].all()


def test_too_many_leaves_message_and_debug_log(caplog):
    edges = np.zeros((24, 20), np.uint8)
    edges[2, 3] = 1  # one edge pixel: 32 -> 16 -> 8 -> 4 around it, 10 leaves
    message = ("mode='threshold' produced 10 leaves, more than num_tokens=9; leaves are never dropped: "
               "raise split_value / min_size, or use mode='fixed'.")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        plan_quadtree(edges=edges, patch_size=4, num_tokens=9, mode="threshold")
    with caplog.at_level(logging.DEBUG, logger="monai_ext.transforms.apf.quadtree"):
        plan_quadtree(edges=edges, patch_size=4, num_tokens=16)
    assert "APF fixed: 24 x 20 -> 10 leaves (+6 padding), p=4" in caplog.messages


def test_morton_codes_of_large_coordinates_bit_by_bit():
    """Codes of coordinates up to 2**31 - 1 (every spreading step of the bit interleave), against a loop over the
    bits: bit b of x goes to bit 2b of the code, bit b of y to bit 2b + 1."""
    rng = np.random.default_rng(0)
    y = np.r_[rng.integers(0, 2**31, 200), 2**31 - 1, 255, 256, 65535, 65536]
    x = np.r_[rng.integers(0, 2**31, 200), 0, 256, 255, 65536, 65535]
    ref = [sum((((int(a) >> b) & 1) << (2 * b + 1)) | (((int(c) >> b) & 1) << (2 * b)) for b in range(31))
           for a, c in zip(y, x)]
    got = morton_encode(y, x)
    assert got.dtype == np.int64 and got.tolist() == ref


def test_unpatch_token_count_message_names_both_counts():
    from monai_ext.transforms import quadtree_unpatch

    meta = plan_quadtree(spatial_shape=(16, 16), patch_size=4, mode="uniform", layout="patches")  # L = 16
    with pytest.raises(ValueError, match=r"^5 tokens given but the metadata has L=16\.$"):
        quadtree_unpatch(np.zeros((5, 2, 4, 4), np.float32), meta, layout="patches")


def test_extract_patches_default_padding_messages_and_integer_inputs():
    from monai_ext.transforms import extract_patches
    from monai_ext.transforms.apf import utils as apf_utils

    # 6 x 8 pads to 8 x 8: four 4 x 4 leaves in Z-order, each averaged 2 x 2 to p = 2
    meta = plan_quadtree(spatial_shape=(6, 8), patch_size=2, mode="uniform", min_size=4, layout="patches")
    out = extract_patches(np.ones((1, 6, 8), np.float32), meta, layout="patches")  # padding value 0 by default
    np.testing.assert_array_equal(out[:2], 1)
    np.testing.assert_array_equal(out[2:, 0], [[[1, 1], [0, 0]]] * 2)
    with pytest.raises(ValueError, match=re.escape("array to patch: expected a channel-first 2D image (C, H, W), got "
                                                   "shape (6, 8).") + "$"):
        extract_patches(np.ones((6, 8)), meta)
    with pytest.raises(ValueError, match="^" + re.escape("array of spatial shape (6, 9) differs from the image the "
                                                         "quadtree was built on (6, 8).") + "$"):
        extract_patches(np.ones((1, 6, 9)), meta)
    # 32- and 64-bit integers: means in float64 (2x2 blocks of 2**24 + 1, + 1, + 1, + 5: mean 2**24 + 2, which
    # float32 holds; float32 inputs would give 2**24)
    big = np.full((1, 6, 8), 2**24 + 1, np.int64)
    big[0, 1::2, 1::2] = 2**24 + 5
    full = np.zeros((8, 8))
    full[:6] = big[0]
    ref = full.reshape(4, 2, 4, 2).mean(axis=(1, 3)).astype(np.float32)
    for dtype in (np.int32, np.int64):
        got = extract_patches(big.astype(dtype), meta, layout="grid")  # grid of 2 x 2 tokens: the 4 x 4 means
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got[0], ref)
    # 8-bit: block means within 0.5, rounded to integers when OpenCV does the averaging (documented)
    u8 = np.arange(48, dtype=np.uint8).reshape(1, 6, 8) * 5
    got = extract_patches(u8, meta, layout="grid")[0]
    full[:] = 0
    full[:6] = u8[0]
    exact = full.reshape(4, 2, 4, 2).mean(axis=(1, 3))
    assert np.abs(got - exact).max() <= 0.5
    assert np.array_equal(got, np.round(got)) == apf_utils.HAS_CV2 and not np.array_equal(exact, np.round(exact))


def _greedy_fixed_leaves(edges: np.ndarray, num_tokens: int, min_size: int) -> np.ndarray:
    """The paper's fixed-length tree one split at a time: split the leaf with the most edge pixels (ties: the
    shallower, then the earlier in Z-order) while three more leaves fit; leaves in Z-order."""
    import heapq

    def zkey(y: int, x: int) -> int:
        return sum((((y >> b) & 1) << (2 * b + 1)) | (((x >> b) & 1) << (2 * b)) for b in range(16))

    n = edges.shape[0]
    leaves = {(0, 0, n)}
    heap = [(-int(edges.sum()), 0, 0, 0, 0, n)]
    while heap and len(leaves) + 3 <= num_tokens:
        neg, d, _, y, x, s = heapq.heappop(heap)
        if neg == 0 or s <= min_size:
            continue
        leaves.remove((y, x, s))
        h = s // 2
        for dy, dx in ((0, 0), (0, h), (h, 0), (h, h)):
            leaves.add((y + dy, x + dx, h))
            count = int(edges[y + dy : y + dy + h, x + dx : x + dx + h].sum())
            heapq.heappush(heap, (-count, d + 1, zkey(y + dy, x + dx), y + dy, x + dx, h))
    return np.array(sorted(leaves, key=lambda t: zkey(t[0] // min_size, t[1] // min_size)), dtype=np.int64)


def test_fixed_mode_ranks_thousands_of_candidates_like_the_greedy_tree():
    """A larger tree than test_apf.py's (256 x 256, thousands of split candidates, 341 splits) against the greedy
    reference. (It does not catch an off-by-one ``kth`` in the top-k ``argpartition``: numpy's introselect left
    the neighbours of ``kth`` in order in every plan tried, see docs/testing.md.)"""
    rng = np.random.default_rng(4)
    edges = rng.random((256, 256)) < np.kron(rng.random((16, 16)), np.ones((16, 16))) * 0.3
    meta = plan_quadtree(spatial_shape=(256, 256), edges=edges, patch_size=2, num_tokens=1024, mode="fixed")
    ref = _greedy_fixed_leaves(edges, 1024, 2)
    assert meta["num_leaves"] == len(ref) == 1024
    np.testing.assert_array_equal(meta["leaves"], ref)


def test_unpatch_outputs_are_float_masks_and_class_indices():
    """``argmax`` and ``threshold`` give float outputs (like MONAI's ``AsDiscrete``), also from integer tokens."""
    import torch

    from monai_ext.transforms import quadtree_unpatch

    meta = plan_quadtree(spatial_shape=(8, 8), patch_size=4, mode="uniform", layout="patches")  # 4 leaves of 4
    two = np.zeros((4, 2, 4, 4), np.float32)
    two[1, 1] = 1.0  # leaf 1 (top right) is class 1
    want = np.zeros((1, 8, 8), np.float32)
    want[0, :4, 4:] = 1
    for out in (quadtree_unpatch(two, meta, layout="patches", argmax=True),
                quadtree_unpatch(two[:, 1:], meta, layout="patches", threshold=0.5)):
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, want)
    ints = torch.zeros((4, 3, 4, 4), dtype=torch.int64)
    ints[3, 2] = 5  # leaf 3 (bottom right) is class 2
    out = quadtree_unpatch(ints, meta, layout="patches", argmax=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out[0, 4:, 4:].eq(2).all() and out[0, :4].eq(0).all() and out[0, 4:, :4].eq(0).all()


def test_unpatch_area_mode_against_interpolate_per_leaf():
    """A mode outside the matrix fast path and other than bicubic (test_apf_errors.py) goes through
    ``F.interpolate`` without ``align_corners`` (which ``"area"`` refuses)."""
    mode = "area"
    import torch
    import torch.nn.functional as F

    from monai_ext.transforms import quadtree_unpatch

    edges = np.zeros((16, 16), bool)
    edges[2, 3] = True  # leaves of 2, 4 and 8
    meta = plan_quadtree(spatial_shape=(16, 16), edges=edges, patch_size=2, num_tokens=16, layout="patches")
    tokens = np.random.default_rng(0).random((16, 1, 2, 2)).astype(np.float32)
    out = quadtree_unpatch(tokens, meta, layout="patches", mode=mode)
    for i, (y, x, s) in enumerate(meta["leaves"][: meta["num_leaves"]]):
        ref = F.interpolate(torch.from_numpy(tokens[i : i + 1]), size=(int(s), int(s)), mode=mode)[0].numpy()
        np.testing.assert_allclose(out[:, y : y + s, x : x + s], ref, rtol=1e-6, atol=1e-6)


def test_plan_settings_defaults_one_pixel_images_and_depth():
    """``plan_settings`` on its own (the streaming planner calls it before any read): its defaults (fixed mode,
    grid layout), 1-pixel-wide images and a single token, and the depth rule (``max_depth`` ignored in uniform
    mode). Expected values worked out by hand."""
    assert plan_settings((20, 32), patch_size=4, num_tokens=16) == (4, 4, 32, 3)
    assert plan_settings((64, 40), patch_size=4, min_size=8, mode="threshold") == (4, 8, 64, 3)
    for shape in ((1, 5), (5, 1)):
        assert plan_settings(shape, patch_size=1, num_tokens=1, layout="patches") == (1, 1, 8, 3)
    for mode, max_depth, depth in (("fixed", 0, 0), ("threshold", 2, 2), ("threshold", 9, 3), ("uniform", 0, 3)):
        assert plan_settings((64, 64), patch_size=8, num_tokens=64, mode=mode, max_depth=max_depth)[3] == depth
    for kwargs, message in (
        ({}, "mode='fixed' needs num_tokens (the sequence length L)."),
        (dict(num_tokens=10), "num_tokens=10 is not a perfect square: the 'grid' layout needs L = S*S tokens "
                              "(e.g. 9 or 16); use layout='patches' for other lengths."),
        (dict(num_tokens=16, min_size=32), "patch_size=4 / min_size=32 is larger than the image (16 x 9, padded "
                                           "to 16 x 16)."),
        (dict(mode="zigzag"), "mode must be one of ('fixed', 'threshold', 'uniform'), got 'zigzag'."),
        (dict(patch_size=6), "patch_size must be a power of two, got 6."),
    ):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            plan_settings((16, 9), **{"patch_size": 4, **kwargs})
    with pytest.raises(ValueError, match="^" + re.escape("empty image of spatial shape (0, 7).") + "$"):
        plan_settings((0, 7), patch_size=1, num_tokens=1)


def _block_sums(edges: np.ndarray, side: int, size: int) -> np.ndarray:
    """Edge pixels of each ``size x size`` block of ``edges`` zero-padded to ``side x side`` (plain reshape sums)."""
    full = np.zeros((side, side), np.int64)
    full[: edges.shape[0], : edges.shape[1]] = edges != 0
    return full.reshape(side // size, size, side // size, size).sum(axis=(1, 3))


def test_plan_from_counts_defaults_and_count_checks():
    """Planning from block counts gives plan_quadtree's plan of the same edge map, with the same defaults (fixed
    mode, ``split_value=0``, grid layout), from 0 / 1, unsigned and boolean counts; each bad input is named."""
    edges = np.zeros((24, 20), np.uint8)
    edges[2, 3] = 1  # one edge pixel (count 1 at every depth): 10 leaves only if a count of 1 splits
    finest = _block_sums(edges, 32, 4)
    meta = plan_from_counts(finest, (24, 20), patch_size=4, num_tokens=16)
    ref = plan_quadtree(edges=edges, patch_size=4, num_tokens=16)
    assert meta["num_leaves"] == ref["num_leaves"] == 10
    for key in ("leaves", "mask", "spatial_shape", "padded_size", "patch_size"):
        np.testing.assert_array_equal(meta[key], ref[key])
    for counts in (finest.astype(np.uint8), finest > 0, np.zeros((8, 8), np.int32)):
        got = plan_from_counts(counts, (24, 20), patch_size=4, num_tokens=16, mode="threshold")
        want = plan_quadtree(edges=edges * counts.any(), patch_size=4, num_tokens=16, mode="threshold")
        np.testing.assert_array_equal(got["leaves"], want["leaves"])
    uni = plan_from_counts(None, (16, 16), patch_size=4, mode="uniform", layout="patches")
    np.testing.assert_array_equal(uni["leaves"], plan_quadtree(spatial_shape=(16, 16), patch_size=4, mode="uniform",
                                                               layout="patches")["leaves"])
    for counts, kwargs, message in (
        (None, dict(mode="threshold"), "mode='threshold' needs the edge counts (finest_counts is None)."),
        (finest[:4, :4], {}, "finest_counts of shape (4, 4): expected (8, 8), the 4 x 4 blocks of the 32 x 32 "
                             "padded square of a 24 x 20 image."),
        (finest.astype(float), {}, "finest_counts must hold integer counts, got dtype float64."),
        (-finest, {}, "finest_counts holds negative counts."),
    ):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            plan_from_counts(counts, (24, 20), **{"patch_size": 4, "num_tokens": 16, **kwargs})


def test_fixed_mode_ties_across_levels_like_the_greedy_tree():
    """Maps of isolated edge pixels, whose nodes tie at counts 1 and 2 over several depths: every length from 1
    (no split fits) to past the full tree against the greedy reference, so that the ties at the ``k``-th count
    are cut at every level and at every Z-position (shallow first, then Z-order)."""
    rng = np.random.default_rng(7)
    sparse = np.zeros((64, 64), bool)
    for by in range(0, 64, 16):  # one pixel in each 16 x 16 block: ties at count 1 over depths 2-4
        for bx in range(0, 64, 16):
            sparse[by + rng.integers(16), bx + rng.integers(16)] = True
    pairs = sparse.copy()
    pairs[np.flatnonzero(sparse.any(axis=1))[::2], 1] = True  # a second pixel in some blocks: ties at 1 and 2
    for edges in (sparse, pairs):
        for num_tokens in range(1, 130):
            meta = plan_quadtree(spatial_shape=(64, 64), edges=edges, patch_size=2, num_tokens=num_tokens,
                                 layout="patches")
            np.testing.assert_array_equal(meta["leaves"][: meta["num_leaves"]],
                                          _greedy_fixed_leaves(edges, num_tokens, 2), err_msg=f"L={num_tokens}")
    # 1 024 nodes of 4 x 4 tie at count 1 with one split left (L = 1 + 3 * (1 + 4 + ... + 256 + 1)): the first
    # Z-position out of a tie set large enough that numpy's introselect leaves the rest unordered (an
    # ``argpartition`` at ``kth = remaining - 2`` picks another node here, not in the small maps above)
    grid = np.zeros((128, 128), bool)
    iy, ix = np.mgrid[0:128:4, 0:128:4]
    grid[iy + rng.integers(0, 4, iy.shape), ix + rng.integers(0, 4, ix.shape)] = True
    meta = plan_quadtree(spatial_shape=(128, 128), edges=grid, patch_size=2, num_tokens=1027, layout="patches")
    np.testing.assert_array_equal(meta["leaves"], _greedy_fixed_leaves(grid, 1027, 2))


def test_argument_errors_come_before_image_and_edge_checks():
    """plan_quadtree checks every argument (``min_size``, ``max_depth``) before it looks at the image or the edge
    map, so a call wrong in both names the argument."""
    message = "min_size must be a power of two >= patch_size=4 (leaves are never up-sampled), got 12."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        plan_quadtree(np.zeros((32, 32)), patch_size=4, num_tokens=16, min_size=12)  # and a 2-D image
    with pytest.raises(ValueError, match="^" + re.escape("max_depth must be >= 0, got -1.") + "$"):
        plan_quadtree(edges=np.ones((2, 32, 32)), spatial_shape=(32, 32), patch_size=4, num_tokens=16, max_depth=-1)
