"""Unpatching onto a whole slide (monai_ext.wsi.unpatch): region rendering against quadtree_unpatch (scale 1,
level 0) and against torch's grid_sample at any level and scale; the pyramidal TIFF round trip; padding-token
masking of token grids."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from monai_ext.transforms import plan_quadtree, quadtree_unpatch
from monai_ext.utils.zorder import grid_to_tokens
from monai_ext.wsi.transforms import MaskPaddingTokensd
from monai_ext.wsi.unpatch import LeafRenderer, write_prediction_pyramid


def _blobs(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((3, h, w), 230, np.uint8)
    for _ in range(40):
        y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, 20)
        yy, xx = np.ogrid[:h, :w]
        img[:, (yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 120)
    return img


def _plan(h: int, w: int, p: int = 4, num_tokens: int = 64, seed: int = 0) -> dict:
    return plan_quadtree(_blobs(h, w, seed), patch_size=p, num_tokens=num_tokens)


def _real(meta: dict, grid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    tokens = grid_to_tokens(grid, int(meta["patch_size"])).numpy()
    real = np.flatnonzero(meta["mask"])
    return tokens[real], meta["leaves"][real]


def _grid_sample_reference(tokens, leaves, scale, level, y, x, h, w) -> np.ndarray:
    """Every output pixel on its own: its centre in target coordinates, the leaf holding it (brute force), the
    leaf's p x p prediction sampled there by grid_sample (bilinear, border clamp, align_corners=False)."""
    ty = (np.arange(y, y + h) + 0.5) * 2**level / scale
    tx = (np.arange(x, x + w) + 0.5) * 2**level / scale
    out = np.zeros((tokens.shape[1], h, w))
    for i, (ly, lx, s) in enumerate(leaves):
        rows = np.flatnonzero((ty >= ly) & (ty < ly + s))
        cols = np.flatnonzero((tx >= lx) & (tx < lx + s))
        if rows.size == 0 or cols.size == 0:
            continue
        gy = (ty[rows] - ly) / s * 2 - 1
        gx = (tx[cols] - lx) / s * 2 - 1
        grid = torch.from_numpy(np.stack(np.meshgrid(gx, gy), axis=-1)[None]).double()
        v = F.grid_sample(torch.from_numpy(tokens[i][None]).double(), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)[0].numpy()
        out[:, rows[:, None], cols[None, :]] = v
    return out


def test_level0_at_scale1_equals_quadtree_unpatch():
    meta = _plan(96, 128)
    side = int(meta["padded_size"])
    grid = torch.randn(2, 8 * 4, 8 * 4, generator=torch.Generator().manual_seed(1))
    tokens, leaves = _real(meta, grid)
    ref = quadtree_unpatch(grid, meta).numpy()  # (2, 96, 128) bilinear
    r = LeafRenderer(tokens, leaves, 1.0, (96, 128))
    np.testing.assert_allclose(r.values(0, 0, 0, 96, 128), ref, atol=1e-5)
    np.testing.assert_allclose(r.values(0, 17, 33, 40, 50), ref[:, 17:57, 33:83], atol=1e-5)
    # class map: first maximum, as argmax
    np.testing.assert_array_equal(r.labels(0, 0, 0, 96, 128), ref.argmax(0))
    assert side == 128


@pytest.mark.parametrize(("scale", "level"), [(1.0, 1), (1.0, 2), (2.5, 0), (4.0, 1), (0.75, 0)])
def test_any_level_and_scale_equals_grid_sample(scale, level):
    meta = _plan(64, 64, num_tokens=49)
    grid = torch.randn(3, 7 * 4, 7 * 4, generator=torch.Generator().manual_seed(2))
    tokens, leaves = _real(meta, grid)
    h0, w0 = int(np.ceil(64 * scale)), int(np.ceil(64 * scale))
    r = LeafRenderer(tokens, leaves, scale, (h0, w0))
    hl, wl = -(-h0 // 2**level), -(-w0 // 2**level)
    got = r.values(level, 0, 0, hl, wl)
    ref = _grid_sample_reference(tokens, leaves, scale, level, 0, 0, hl, wl)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_write_prediction_pyramid_levels_match_the_renderer(tmp_path):
    meta = dict(_plan(200, 150, num_tokens=64))
    meta["level0_shape"] = np.array([800, 600])  # the slide is 4x the target scale
    meta["scale"] = np.float64(4.0)
    grid = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(3))
    out = write_prediction_pyramid(tmp_path / "p.tif", grid, meta, tile=128, min_side=128)
    tokens, leaves = _real(meta, grid)
    r = LeafRenderer(tokens[:, 1:2] - tokens[:, 0:1], leaves, 4.0, (800, 600))
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert levels[0].shape[:2] == (800, 600)
        assert len(levels) >= 3
        for k, lvl in enumerate(levels):
            arr = lvl.asarray()
            hk, wk = arr.shape[:2]
            assert (hk, wk) == (-(-800 // 2**k), -(-600 // 2**k))
            np.testing.assert_array_equal(arr, r.labels(k, 0, 0, hk, wk))
    # the level-0 class map is the full-resolution argmax of quadtree_unpatch sampled at the slide's pixels
    full = quadtree_unpatch(grid, meta).numpy()  # (2, 200, 150) at the target scale
    with tifffile.TiffFile(out) as tif:
        lv0 = tif.series[0].levels[0].asarray()
    centre = lv0[2::4, 2::4]  # level-0 pixel 4i+2 has its centre at target i + 0.625: same leaf as target pixel i
    agree = (centre == full.argmax(0)).mean()
    assert agree > 0.97
    with pytest.raises(FileExistsError):
        write_prediction_pyramid(out, grid, meta)


def test_mask_padding_tokens_sets_padding_cells_only():
    meta = _plan(64, 64, num_tokens=36)  # fixed mode: 1 + 3k = 34 real leaves, 2 padding tokens
    assert int(meta["num_leaves"]) == 34
    pred = torch.ones(1, 24, 24)
    d = MaskPaddingTokensd(keys="pred")({"pred": pred, "image_apf": meta})
    tokens = grid_to_tokens(d["pred"], 4)
    assert torch.all(tokens[meta["mask"]] == 1) and torch.all(tokens[~meta["mask"]] == 0)
    assert torch.all(pred == 1)  # the input is not modified
