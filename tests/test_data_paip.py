"""PAIP 2019 preparation and synthetic slides: synth -> prepare -> a batch, a real SVS, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from monai_ext.data import paip
from monai_ext.data.common import DataError
from monai_ext.data.synthetic import paip as synth_paip

REAL_SVS = Path(__file__).parent / "data" / "cmu_small_region.svs"  # CC0, see data/cmu_small_region.README.md


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paip_raw")
    synth_paip.synthesize(root, cases=3, seed=1, size=1024)
    return root


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paip_prep")
    paip.prepare(raw, out, resolutions=[512, 1024], split=(1, 1, 1))
    return out


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthetic_slide_is_an_svs_pyramid(raw):
    svs = raw / "01_01_0001.svs"
    with tifffile.TiffFile(svs) as tif:
        assert tif.is_svs
        levels = [lvl.shape for lvl in tif.series[0].levels]
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        assert tif.pages[0].is_tiled and tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        assert tif.pages[0].description.startswith("Aperio Image Library") and "MPP = " in tif.pages[0].description
    h, w = levels[0][:2]
    assert w == 1024 and 768 <= h <= 1024 and levels[1][:2] == (h // 4, w // 4)
    for kind in ("whole", "viable"):
        m = tifffile.imread(raw / f"01_01_0001_{kind}.tif")
        assert m.shape == (h, w) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    whole = tifffile.imread(raw / "01_01_0001_whole.tif")
    viable = tifffile.imread(raw / "01_01_0001_viable.tif")
    assert not np.any(viable & (1 - whole))  # viable inside whole
    assert 0.02 < viable.mean() < whole.mean() < 0.6


def test_synthetic_slide_looks_like_he_and_tumour_differs(raw):
    with paip.Slide(raw / "01_01_0002.svs") as slide:
        rgb = slide.read(0).astype(float)
    whole = tifffile.imread(raw / "01_01_0002_whole.tif").astype(bool)
    viable = tifffile.imread(raw / "01_01_0002_viable.tif").astype(bool)
    tissue = rgb.mean(-1) < 225
    assert 0.2 < tissue.mean() < 0.95 and rgb[~tissue].mean() > 235  # tissue on white glass
    r, g, b = (rgb[tissue & ~whole][:, i].mean() for i in range(3))
    assert r > g and b > g  # pink/purple (eosin + haematoxylin), not grey
    # viable tumour is darker (more nuclei) than normal tissue on average, but overlaps locally
    assert rgb[viable].mean() < rgb[tissue & ~whole].mean() - 10


def test_synthesis_is_deterministic(raw, tmp_path):
    synth_paip.synthesize(tmp_path, cases=1, seed=1, size=1024)
    for name in ("01_01_0001.svs", "01_01_0001_whole.tif", "01_01_0001_viable.tif"):
        assert _sha(tmp_path / name) == _sha(raw / name)
    synth_paip.synthesize(tmp_path / "other", cases=1, seed=2, size=1024)
    assert _sha(tmp_path / "other" / "01_01_0001.svs") != _sha(raw / "01_01_0001.svs")


def test_reader_two_levels_synthetic(raw):
    with paip.Slide(raw / "01_01_0003.svs") as slide:
        assert slide.level_count == 2
        l0, l1 = slide.read(0), slide.read(1)
    assert l0.shape == (*slide.levels[0], 3) and l1.shape == (*slide.levels[1], 3)
    ref = np.asarray(Image.fromarray(l0).reduce(4)).astype(float)
    assert np.abs(ref - l1).mean() < 6  # same picture, JPEG-compressed twice


def test_prepare_outputs_and_batch(raw, prepared):
    from monai.data import DataLoader, Dataset, load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

    per = json.loads((prepared / "datalist_512.json").read_text())
    combined = json.loads((prepared / "datalist.json").read_text())
    assert sorted(e["case"] for s in ("training", "validation", "test") for e in per[s]) == [
        "01_01_0001",
        "01_01_0002",
        "01_01_0003",
    ]
    assert len(per["training"]) == len(per["validation"]) == len(per["test"]) == 1
    assert json.loads((prepared / "skipped.json").read_text()) == []
    e = combined["training"][0]
    assert {"image_512", "label_512", "label_whole_512", "image_1024", "label_1024", "label_whole_1024"} <= set(e)

    for r in (512, 1024):
        for case in ("01_01_0001", "01_01_0002"):
            img = _png(prepared / str(r) / "images" / f"{case}.png")
            v = _png(prepared / str(r) / "labels" / f"{case}_viable.png")
            w = _png(prepared / str(r) / "labels" / f"{case}_whole.png")
            assert img.shape == (r, r, 3) and img.dtype == np.uint8 and v.shape == w.shape == (r, r)
            assert set(np.unique(v)) <= {0, 1} and not np.any(v & (1 - w))
            # reference: pad the level-0 mask to the square, box-average, threshold at one half
            m0 = tifffile.imread(raw / f"{case}_viable.tif").astype(float)
            side = max(m0.shape)
            sq = np.zeros((side, side))
            sq[: m0.shape[0], : m0.shape[1]] = m0
            k = side // r
            ref = sq.reshape(r, k, r, k).mean(axis=(1, 3)) >= 0.5
            assert np.array_equal(v.astype(bool), ref)
            h0 = m0.shape[0]
            if h0 < side:  # padding rows at the bottom are white
                assert img[-((side - h0) * r // side) :].min() == 255

    files = load_decathlon_datalist(str(prepared / "datalist_512.json"), True, "training", base_dir=str(prepared))
    keys = ["image", "label"]
    t = Compose([LoadImaged(keys=keys), EnsureChannelFirstd(keys=keys), ScaleIntensityd(keys="image")])
    files = files + load_decathlon_datalist(
        str(prepared / "datalist_512.json"), True, "validation", base_dir=str(prepared)
    )
    batch = next(iter(DataLoader(Dataset(files, t), batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 3, 512, 512) and tuple(batch["label"].shape) == (2, 1, 512, 512)
    assert set(batch["label"].unique().int().tolist()) == {0, 1}
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0


def test_prepare_idempotent(raw, prepared):
    target = prepared / "512" / "images" / "01_01_0001.png"
    stamp = target.stat().st_mtime_ns
    listing = (prepared / "datalist_512.json").read_text()
    paip.prepare(raw, prepared, resolutions=[512, 1024], split=(1, 1, 1))
    assert target.stat().st_mtime_ns == stamp and (prepared / "datalist_512.json").read_text() == listing
    with pytest.raises(ValueError, match="other settings"):
        paip.prepare(raw, prepared, resolutions=[512], level=1, split=(1, 1, 1))


def test_resolutions_validated():
    assert paip.check_resolutions([1024, 512, 512]) == [512, 1024]
    assert paip.check_resolutions([65536, 16384, 512]) == [512, 16384, 65536]  # above 8192: streamed
    assert [paip.streamed(r) for r in (8192, 16384)] == [False, True]
    for bad in ([256], [131072], [768], [24576]):
        with pytest.raises(ValueError, match=r"powers of two in 512..65536 \(quadtree patching; above 8192 streamed"):
            paip.check_resolutions(bad)


def test_mask_binning_matches_reference_on_strips(tmp_path):
    """Strip-based (not tiled) mask whose size is no multiple of the output: exact area fractions."""
    rng = np.random.default_rng(0)
    m = (rng.random((1000, 700)) < 0.5).astype(np.uint8)
    m[100:600, 50:400] = 1
    path = tmp_path / "m_viable.tif"
    tifffile.imwrite(path, m, rowsperstrip=7, compression="zlib")
    side, res = 1000, 512
    got = paip.read_mask_sums(path, side, res)
    ref = np.zeros((res, res))
    yy, xx = np.nonzero(m)
    np.add.at(ref, (yy * res // side, xx * res // side), 1)
    assert np.array_equal(got, ref)


def test_real_svs_through_reader():
    """A real Aperio SVS (OpenSlide CMU-1 region, CC0): the reader matches tifffile's view."""
    with tifffile.TiffFile(REAL_SVS) as tif:
        expected = [tuple(lvl.shape[:2]) for lvl in tif.series[0].levels]
        thumb_shape = tif.series[1].shape
    assert expected == [(2967, 2220)] and thumb_shape == (768, 574, 3)  # a single pyramid level
    with paip.Slide(REAL_SVS) as slide:
        assert slide.levels == expected and slide.level_count == 1
        rgb = slide.read(0)
        # the file has no level 1 (its second page is the thumbnail, not a pyramid level)
        with pytest.raises(DataError, match=r"cmu_small_region\.svs: pyramid level 1 requested but the slide has 1"):
            slide.read(1)
    assert rgb.shape == (2967, 2220, 3) and rgb.dtype == np.uint8 and rgb.any()
    f = rgb.astype(float)
    tissue = f.mean(-1) < 200
    assert 0.05 < tissue.mean() < 0.95
    r, g, b = (f[tissue][:, i].mean() for i in range(3))
    assert r > g + 20 and b > g + 10  # H&E: pink/purple tissue


def test_real_pixels_in_a_two_level_pyramid(tmp_path):
    """The real slide's pixels rewritten as a two-level SVS: both levels read at their sizes."""
    with paip.Slide(REAL_SVS) as slide:
        real = slide.read(0)
    path = tmp_path / "real2.svs"
    synth_paip.write_svs(path, real, downsamples=(4,))
    with paip.Slide(path) as slide:
        assert slide.levels == [(2967, 2220), (742, 555)]  # ceil(2967 / 4), ceil(2220 / 4)
        l0, l1 = slide.read(0), slide.read(1)
    assert np.abs(l0.astype(float) - real).mean() < 4
    assert np.abs(l1.astype(float) - np.asarray(Image.fromarray(real).reduce(4))).mean() < 4


def test_real_svs_prepare_pads_with_white(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copy(REAL_SVS, src / "cmu.svs")
    whole = np.zeros((2967, 2220), np.uint8)
    whole[1000:2000, 500:1500] = 1
    viable = np.zeros_like(whole)
    viable[1200:1800, 700:1300] = 1
    tifffile.imwrite(src / "cmu_whole.tif", whole, rowsperstrip=64, compression="lzw")
    tifffile.imwrite(src / "cmu_viable.tif", viable, tile=(256, 256), compression="zlib")
    out = tmp_path / "out"
    dl = paip.prepare(src, out, resolutions=[512], split=(1, 0, 0))
    assert [e["case"] for e in dl["training"]] == ["cmu"]
    img = _png(out / "512" / "images" / "cmu.png")
    v = _png(out / "512" / "labels" / "cmu_viable.png")
    cols = int(2220 * 512 / 2967)  # width is padded on the right
    assert img[:, cols + 1 :].min() == 255 and img[:, :cols].min() < 200
    ys, xs = np.nonzero(v)
    s = 512 / 2967
    assert abs(ys.min() - 1200 * s) <= 1 and abs(xs.max() + 1 - 1300 * s) <= 1


def test_bad_inputs_are_skipped_with_reasons(raw, tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(raw, src)
    blob = (src / "01_01_0001.svs").read_bytes()
    (src / "01_01_0001.svs").write_bytes(blob[: len(blob) // 3])  # truncated slide
    (src / "01_01_0002_viable.tif").unlink()  # missing mask
    (src / "sub").mkdir()
    shutil.copy(raw / "01_01_0003.svs", src / "sub" / "01_02_0004.svs")
    shutil.copy(raw / "01_01_0003_whole.tif", src / "sub" / "01_02_0004_whole.tif")
    tifffile.imwrite(src / "sub" / "01_02_0004_viable.tif", np.zeros((64, 64), np.uint8))  # wrong size
    out = tmp_path / "out"
    dl = paip.prepare(src, out, resolutions=[512], split=(1, 0, 0))
    assert [e["case"] for e in dl["training"]] == ["01_01_0003"]
    skipped = {s["case"]: s for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == {"01_01_0001", "01_01_0002", "01_02_0004"}
    assert skipped["01_01_0001"]["file"].endswith("01_01_0001.svs")
    assert "01_01_0001.svs" in skipped["01_01_0001"]["reason"]
    assert "viable mask missing" in skipped["01_01_0002"]["reason"]
    assert "mask size (64, 64) differs from level 0" in skipped["01_02_0004"]["reason"]


def test_data_error_survives_worker_processes():
    """``--workers N`` sends each case's DataError back from a worker process by pickling."""
    import pickle

    e = pickle.loads(pickle.dumps(DataError("raw/x.svs", "cannot decode level 0")))
    assert isinstance(e, DataError) and e.path == "raw/x.svs" and str(e) == "raw/x.svs: cannot decode level 0"
