"""monai_ext.utils.tiff_pyramid: streamed pyramidal TIFF, checked against in-memory references read back with
tifffile and MONAI's WSIReader."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from monai_ext.utils.tiff_pyramid import pyramid_shapes, write_pyramid


def _levels(shapes: list[tuple[int, int]], channels: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, channels)[: 3 if channels > 1 else 2], dtype=np.uint8) for h, w in shapes]


def _render(levels: list[np.ndarray]):
    calls: list[tuple[int, int, int, int, int]] = []

    def render(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        calls.append((level, y, x, h, w))
        return levels[level][y : y + h, x : x + w]

    return render, calls


def _read_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == 1
        return [np.squeeze(lv.asarray()) for lv in tif.series[0].levels]


def test_pyramid_shapes_halve_with_ceiling_down_to_min_side() -> None:
    assert pyramid_shapes((1300, 2100)) == [(1300, 2100), (650, 1050), (325, 525), (163, 263)]
    assert pyramid_shapes((512, 100)) == [(512, 100)]
    assert pyramid_shapes((513, 100)) == [(513, 100), (257, 50)]
    shapes = pyramid_shapes((65536, 40000), min_side=512)
    assert shapes[-1] == (512, 313) and len(shapes) == 8
    for k, (h, w) in enumerate(shapes):
        assert (h, w) == (math.ceil(65536 / 2**k), math.ceil(40000 / 2**k))
    with pytest.raises(ValueError, match="positive"):
        pyramid_shapes((0, 10))


def test_lossless_round_trip_every_level_non_multiple_of_tile(tmp_path: Path) -> None:
    size = (1300, 2100)
    shapes = pyramid_shapes(size, min_side=300)
    levels = _levels(shapes, 3)
    render, calls = _render(levels)
    path = tmp_path / "a.tif"
    assert write_pyramid(path, size, render, compression="zlib", tile=256, min_side=300, mpp=0.25) == shapes
    got = _read_levels(path)
    assert len(got) == len(shapes) == 4
    for k, (a, b) in enumerate(zip(got, levels)):
        np.testing.assert_array_equal(a, b, err_msg=f"level {k}")
    # tile by tile: never more than one tile per call, every pixel rendered exactly once
    assert max(h for _, _, _, h, _ in calls) == 256 and max(w for *_, w in calls) == 256
    assert sum(h * w for _, _, _, h, w in calls) == sum(h * w for h, w in shapes)
    with tifffile.TiffFile(path) as tif:
        page1 = tif.pages[1]
        assert page1.is_tiled and (page1.tilelength, page1.tilewidth) == (256, 256)
        assert page1.photometric == tifffile.PHOTOMETRIC.RGB
        xres = page1.tags["XResolution"].value
        assert page1.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert xres[0] / xres[1] == pytest.approx(1e4 / (0.25 * 2100 / 1050))  # pixels per cm at level 1


def test_workers_keep_the_tile_order(tmp_path: Path) -> None:
    size = (700, 900)
    levels = _levels(pyramid_shapes(size, 256), 3, seed=3)
    render, _ = _render(levels)
    write_pyramid(tmp_path / "w.tif", size, render, compression="lzw", tile=128, min_side=256, workers=3)
    for a, b in zip(_read_levels(tmp_path / "w.tif"), levels):
        np.testing.assert_array_equal(a, b)


def test_jpeg_levels_close_to_the_rendered_image(tmp_path: Path) -> None:
    size = (1024, 1536)
    shapes = pyramid_shapes(size)
    yy, xx = np.mgrid[0:1024, 0:1536]
    smooth = np.stack([128 + 100 * np.sin(xx / 50), 128 + 100 * np.cos(yy / 70), 128 + 90 * np.sin((xx + yy) / 90)], -1)
    levels = [smooth[:: 2**k, :: 2**k].astype(np.uint8) for k in range(len(shapes))]
    assert [lv.shape[:2] for lv in levels] == shapes
    render, _ = _render(levels)
    write_pyramid(tmp_path / "j.tif", size, render, quality=95)
    got = _read_levels(tmp_path / "j.tif")
    for a, b in zip(got, levels):
        diff = np.abs(a.astype(float) - b)
        assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12
    with tifffile.TiffFile(tmp_path / "j.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG


def test_one_channel_labels(tmp_path: Path) -> None:
    size = (600, 1000)
    shapes = pyramid_shapes(size, 200)
    levels = [(lv % 3).astype(np.uint8) for lv in _levels(shapes, 1)]

    def render(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:  # (h, w, 1) is accepted too
        return levels[level][y : y + h, x : x + w, None]

    write_pyramid(tmp_path / "m.tif", size, render, channels=1, compression="zlib", min_side=200, tile=128)
    got = _read_levels(tmp_path / "m.tif")
    assert [g.shape for g in got] == shapes
    for a, b in zip(got, levels):
        np.testing.assert_array_equal(a, b)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK


def test_monai_wsireader_and_tifffile_see_every_level(tmp_path: Path) -> None:
    from monai.data import WSIReader

    size = (1300, 2100)
    shapes = pyramid_shapes(size)
    levels = _levels(shapes, 3, seed=1)
    render, _ = _render(levels)
    path = tmp_path / "p.tif"
    write_pyramid(path, size, render, compression="zlib", mpp=0.5)
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape[:2] for lv in tif.series[0].levels] == shapes
    reader = WSIReader(backend="tifffile", channel_dim=-1)
    wsi = reader.read(str(path))
    assert reader.get_level_count(wsi) == len(shapes)
    assert [tuple(reader.get_size(wsi, k)) for k in range(len(shapes))] == shapes
    assert reader.get_mpp(wsi, 1) == pytest.approx((1.0, 1.0))
    patch, _ = reader.get_data(wsi, location=(0, 0), size=shapes[2], level=2)
    np.testing.assert_array_equal(np.asarray(patch), levels[2])


def test_aperio_description_gets_the_svs_page_order(tmp_path: Path) -> None:
    size = (1500, 1200)
    shapes = pyramid_shapes(size)
    levels = _levels(shapes, 3, seed=2)
    render, _ = _render(levels)
    desc = "Aperio Image Library v12.0.15 \r\n1200x1500 [0,0 1200x1500] (512x512) JPEG/RGB Q=90|MPP = 0.5"
    write_pyramid(tmp_path / "s.svs", size, render, compression="zlib", description=desc)
    with tifffile.TiffFile(tmp_path / "s.svs") as tif:
        assert tif.is_svs and [s.name for s in tif.series] == ["Baseline", "Thumbnail"]
        assert [lv.shape[-3:-1] for lv in tif.series[0].levels] == shapes
        np.testing.assert_array_equal(tif.series[1].asarray(), levels[-1])
        for a, b in zip(tif.series[0].levels, levels):
            np.testing.assert_array_equal(np.squeeze(a.asarray()), b)


def test_refuses_existing_file_and_bad_arguments(tmp_path: Path) -> None:
    levels = _levels(pyramid_shapes((64, 64)), 3)
    render, _ = _render(levels)
    path = tmp_path / "x.tif"
    path.write_bytes(b"not mine")
    with pytest.raises(FileExistsError, match="x.tif"):
        write_pyramid(path, (64, 64), render, tile=16)
    assert path.read_bytes() == b"not mine"
    write_pyramid(path, (64, 64), render, tile=16, overwrite=True, compression=None)
    np.testing.assert_array_equal(_read_levels(path)[0], levels[0])
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramid(tmp_path / "t.tif", (64, 64), render, tile=100)
    with pytest.raises(ValueError, match="positive"):
        write_pyramid(tmp_path / "t.tif", (0, 64), render)
    with pytest.raises(ValueError, match="uint8"):
        write_pyramid(tmp_path / "t.tif", (64, 64), render, dtype=np.uint16)
    assert not list(tmp_path.glob("t.tif")) and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda lv, y, x, h, w: np.zeros((h, w), np.uint8), r"level 0 tile at \(y=0, x=0\).*expected \(32, 32, 3\)"),
        (lambda lv, y, x, h, w: np.zeros((h, w, 3), np.float32), "float32.*expected.*uint8"),
        (
            lambda lv, y, x, h, w: np.zeros((32, 32, 3), np.uint8) if y < 64 else np.zeros((h, w, 2), np.uint8),
            r"level 0 tile at \(y=64, x=0\)",
        ),
    ],
)
def test_wrong_render_output_names_level_and_tile(tmp_path: Path, bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_pyramid(tmp_path / "bad.tif", (100, 64), bad, tile=32, compression="zlib")
    assert list(tmp_path.iterdir()) == []  # no half-written file left


def test_memory_stays_bounded_for_a_large_image(tmp_path: Path) -> None:
    """8192 x 8192 RGB (192 MiB of pixels) written as a JPEG pyramid: traced peak a small fraction of that."""
    size = (8192, 8192)
    yy, xx = np.mgrid[0:512, 0:512]
    tile = np.stack([128 + 90 * np.sin(xx / 40), 128 + 90 * np.cos(yy / 30), 128 + 0 * xx], -1).astype(np.uint8)

    def render(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return tile[:h, :w].copy()

    tracemalloc.start()
    try:
        shapes = write_pyramid(tmp_path / "big.tif", size, render, quality=80, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(shapes) == 5
    assert peak < 24 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.series[0].levels[0].shape == (8192, 8192, 3)
        page = tif.pages[0]
        index = 16 * 3 + 5  # one tile, decoded alone
        tif.filehandle.seek(page.dataoffsets[index])
        data = tif.filehandle.read(page.databytecounts[index])
        got, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        assert np.abs(np.squeeze(got).astype(float) - tile).mean() < 3
