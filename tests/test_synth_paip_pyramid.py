"""Streamed gigapixel synthetic PAIP (monai_ext.data.synthetic.paip_pyramid), at small sizes: layout, pyramid
consistency, masks, edge density, determinism, bounded memory, and the PAIP readers on it."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from monai_ext.data.synthetic.paip_pyramid import write_pyramidal_case
from monai_ext.utils.tiff_pyramid import pyramid_shapes

SIZE = 4096
CASE = "01_01_0007"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 4096 px case written under tracemalloc (its peak traced memory kept for the memory test)."""
    out = tmp_path_factory.mktemp("paip_big")
    tracemalloc.start()
    try:
        paths = write_pyramidal_case(out, CASE, SIZE, seed=3, tile=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with tifffile.TiffFile(paths["image"]) as tif:
        levels = [np.squeeze(lv.asarray()) for lv in tif.series[0].levels]
    whole, viable = tifffile.imread(paths["whole"]), tifffile.imread(paths["viable"])
    return {"out": out, "paths": paths, "peak": peak, "levels": levels, "whole": whole, "viable": viable}


def test_layout_names_and_headers(case: dict) -> None:
    out, paths = case["out"], case["paths"]
    suffixes = {"image": ".svs", "whole": "_whole.tif", "viable": "_viable.tif"}
    assert paths == {k: out / f"{CASE}{s}" for k, s in suffixes.items()}
    assert json.loads((out / "SYNTHETIC.json").read_text())["synthetic"] is True
    with tifffile.TiffFile(paths["image"]) as tif:
        assert tif.is_svs
        assert [lv.shape[-3:] for lv in tif.series[0].levels] == [(*s, 3) for s in pyramid_shapes((SIZE, SIZE))]
        page = tif.pages[0]
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
        assert "MPP = 0.5020" in page.description and f"Filename = {CASE}" in page.description
    for kind in ("whole", "viable"):
        with tifffile.TiffFile(paths[kind]) as tif:
            assert len(tif.pages) == 1
            page = tif.pages[0]
            assert page.is_tiled and page.dtype == np.uint8 and page.shape == (SIZE, SIZE)
            assert page.compression == tifffile.COMPRESSION.LZW


def test_every_level_shows_the_same_slide(case: dict) -> None:
    levels = case["levels"]
    for k in range(1, len(levels)):
        h, w = levels[k].shape[:2]
        ref = cv2.resize(levels[k - 1], (w, h), interpolation=cv2.INTER_AREA).astype(float)
        diff = np.abs(levels[k].astype(float) - ref)
        assert diff.mean() < 6, f"level {k} vs 2x area down-scale of level {k - 1}: mean abs diff {diff.mean():.2f}"
    # a wrong pyramid (level 1 of another region) is far from it: the check can fail
    shifted = np.roll(levels[1], 300, axis=1).astype(float)
    ref1 = cv2.resize(levels[0], levels[1].shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shifted - ref1).mean() > 15


def test_masks_binary_nested_and_matching_the_image(case: dict) -> None:
    whole, viable, rgb = case["whole"], case["viable"], case["levels"][0]
    assert whole.shape == viable.shape == rgb.shape[:2] == (SIZE, SIZE)
    assert set(np.unique(whole)) == {0, 1} and set(np.unique(viable)) == {0, 1}
    assert not (viable & (1 - whole)).any(), "viable tumour outside the whole-tumour mask"
    assert 0.02 < whole.mean() < 0.5 and viable.sum() > 0.5 * whole.sum()
    # tissue from the pixels alone (saturation on glass ~ 0): tumour inside it, both classes present
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    tissue = cv2.blur(sat, (15, 15)) > 25
    assert tissue[whole == 1].mean() > 0.98
    assert (tissue & (whole == 0)).sum() > 0.5 * whole.sum()  # normal tissue as much as tumour
    assert (~tissue).mean() > 0.1  # white glass


def test_tumour_has_more_edges_than_normal_tissue(case: dict) -> None:
    rgb, whole = case["levels"][0], case["whole"]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 1.0), 50, 120) > 0
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    tissue = cv2.erode((cv2.blur(sat, (15, 15)) > 25).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    inner = cv2.erode(whole, np.ones((31, 31), np.uint8)) > 0
    normal = tissue & (cv2.dilate(whole, np.ones((31, 31), np.uint8)) == 0)
    d_tumour, d_normal, d_glass = edges[inner].mean(), edges[normal].mean(), edges[~tissue].mean()
    assert d_tumour > 1.5 * d_normal > 0 and d_glass < 0.2 * d_normal, (d_tumour, d_normal, d_glass)


def test_memory_is_bounded(case: dict) -> None:
    """The 4096 px case is 48 MiB of RGB at level 0 (64 MiB with its levels) and 2 x 16 MiB of masks."""
    assert case["peak"] < 16 * 2**20, f"peak traced memory {case['peak'] / 2**20:.1f} MiB"


def test_same_seed_same_pixels_and_non_square(tmp_path: Path) -> None:
    size = (1024, 1536)  # (H, W)
    a = write_pyramidal_case(tmp_path / "a", "01_01_0001", size, seed=11, tile=256)
    b = write_pyramidal_case(tmp_path / "b", "01_01_0001", size, seed=11, tile=256, workers=2)
    c = write_pyramidal_case(tmp_path / "c", "01_01_0001", size, seed=12, tile=256)
    la, lb, lc = (tifffile.imread(p["image"]) for p in (a, b, c))
    assert la.shape == (1024, 1536, 3)
    np.testing.assert_array_equal(la, lb)
    assert np.abs(la.astype(int) - lc).mean() > 5
    np.testing.assert_array_equal(tifffile.imread(a["viable"]), tifffile.imread(b["viable"]))
    with pytest.raises(FileExistsError, match="01_01_0001.svs"):
        write_pyramidal_case(tmp_path / "a", "01_01_0001", size, seed=11)
    write_pyramidal_case(tmp_path / "a", "01_01_0001", size, seed=12, tile=256, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(a["image"]), lc)


def test_paip_prepare_and_tiled_slide_read_it(case: dict, tmp_path: Path) -> None:
    from monai_ext.data import paip
    from monai_ext.features import TiledSlide

    prepared = tmp_path / "prepared"
    datalist = paip.prepare(case["out"], prepared, resolutions=[512], split=(1.0, 0.0, 0.0))
    (entry,) = [e for split in datalist.values() for e in split]
    assert entry["case"] == CASE and entry["level0_size"] == [SIZE, SIZE]
    img = cv2.cvtColor(cv2.imread(str(prepared / entry["image_512"])), cv2.COLOR_BGR2RGB)
    label = cv2.imread(str(prepared / entry["label_512"]), cv2.IMREAD_UNCHANGED)
    ref = cv2.resize(case["levels"][0], (512, 512), interpolation=cv2.INTER_AREA)
    assert np.abs(img.astype(float) - ref).mean() < 4
    ref_label = cv2.resize(case["viable"].astype(np.float32), (512, 512), interpolation=cv2.INTER_AREA) > 0.5
    assert (label.astype(bool) == ref_label).mean() > 0.99

    slide = TiledSlide(case["paths"]["image"])
    assert slide.levels == pyramid_shapes((SIZE, SIZE))
    assert slide.mpp == pytest.approx(0.502)
    region = slide.read_region(1, 600, 700, 300, 200)
    np.testing.assert_array_equal(region, case["levels"][1][600:900, 700:900])


def test_synth_paip_streams_large_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``monai-ext synth paip --size N`` streams above IN_MEMORY_MAX (lowered here) and keeps the in-memory path."""
    from monai_ext.data.synthetic import paip as synth_paip

    monkeypatch.setattr(synth_paip, "IN_MEMORY_MAX", 1024)
    synth_paip.synthesize(tmp_path / "big", cases=2, seed=5, size=1536, workers=2)
    marker = json.loads((tmp_path / "big" / "SYNTHETIC.json").read_text())
    assert marker["cases"] == 2 and marker["pyramidal"] is True
    one, two = (tifffile.imread(tmp_path / "big" / f"01_01_000{i}.svs") for i in (1, 2))
    assert one.shape == two.shape == (1536, 1536, 3) and np.abs(one.astype(int) - two).mean() > 5
    synth_paip.synthesize(tmp_path / "small", cases=1, seed=5, size=1024)
    assert "pyramidal" not in json.loads((tmp_path / "small" / "SYNTHETIC.json").read_text())
    with tifffile.TiffFile(tmp_path / "small" / "01_01_0001.svs") as tif:
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
    assert {o.flags[0] for o in synth_paip.SYNTH_OPTIONS} == {"--size", "--workers"}
