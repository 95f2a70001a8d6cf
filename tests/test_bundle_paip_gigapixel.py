"""The PAIP bundle at a gigapixel resolution (issue 20), end to end through ``python -m monai.bundle run``:
``prepare paip --resolutions 16384`` lists the slides in place, one tiny epoch at 16384 px through the streaming
planner (configs/gigapixel.yaml), inference writing a pyramidal TIFF whose level 0 has the slide's size
(configs/gigapixel_inference.yaml), and bad slides found before training.

The synthetic slides are 16384 x 1024 px (16384 px at the target scale, the longer side) so that the test stays
within seconds; the square 16K-64K cases are in the benchmark (``monai-ext bench apf-gigapixel``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bundle_utils import BUNDLES, run_bundle

from monai_ext.data import paip
from monai_ext.data.synthetic.paip_pyramid import write_pyramidal_case
from monai_ext.protocols import check_prepared
from monai_ext.workflows import DatasetError
from monai_ext.workflows.slides import check_slide_datalist
from monai_ext.wsi import SlidePredictionWriterd

BUNDLE = BUNDLES / "apf_unetr_paip_segmentation"
TINY = {"presets#cpu#hidden_size": 32, "presets#cpu#mlp_dim": 64, "presets#cpu#num_layers": 2,
        "presets#cpu#num_heads": 2, "presets#cpu#feature_size": 8, "presets#cpu#num_tokens": 64}
SIZE = (1024, 16384)
TRAIN = ["train.yaml", "gigapixel.yaml"]
INFER = ["inference.yaml", "gigapixel_inference.yaml"]

run_bundle = functools.partial(run_bundle, BUNDLE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paip_giga")
    for i in range(3):
        write_pyramidal_case(root / "raw", f"01_01_{i + 1:04d}", SIZE, seed=i, workers=1)
    paip.prepare(root / "raw", root / "prepared", resolutions=[16384], split=(1, 1, 1))
    return root / "prepared"


def _io(tmp: Path, data: Path) -> dict:
    return dict(dataset_dir=str(data), ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "eval"),
                log_dir=str(tmp / "logs"), num_workers=0, image_size=16384, **TINY)


def test_prepare_lists_the_slides_in_place(data):
    body = json.loads((data / "datalist_16384.json").read_text())
    assert body["resolution"] == 16384
    raw = (data.parent / "raw").resolve()
    entries = [e for s in ("training", "validation", "test") for e in body[s]]
    assert len(entries) == 3
    for e in entries:
        assert Path(e["image"]).parent == raw and e["image"].endswith(".svs")
        assert e["label"] == e["image"][:-4] + "_viable.tif" and e["label_whole"] == e["image"][:-4] + "_whole.tif"
        assert e["level0_size"] == list(SIZE)
    assert not (data / "16384").exists()  # no down-scaled copy of a gigapixel slide
    # configs/paper.yaml's data check reads the recorded resolution of a slide datalist (no image header to read)
    assert check_prepared(data, "datalist_16384.json", image_size=16384) == "datalist_16384.json"
    with pytest.raises(DatasetError, match="slides listed for resolution 16384, the overlay expects 32768"):
        check_prepared(data, "datalist_16384.json", image_size=32768)


def test_train_one_epoch_at_16384_and_infer_a_pyramidal_tiff(data, tmp_path):
    io = _io(tmp_path, data)
    proc = run_bundle(TRAIN, "training", epochs=1, val_interval=1, **io)
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log and "train_loss" in log
    assert (tmp_path / "models" / "model.pt").is_file()

    test = json.loads((data / "datalist_16384.json").read_text())["test"]
    slide = Path(test[0]["image"])
    out_dir = tmp_path / "inf"
    run_bundle(INFER, ckpt_dir=io["ckpt_dir"], output_dir=str(out_dir), dataset_dir=str(data), image_size=16384,
               **TINY)
    pred = out_dir / f"{slide.stem}_prediction.tif"
    assert pred.is_file(), sorted(p.name for p in out_dir.iterdir())
    with tifffile.TiffFile(pred) as tif:
        levels = tif.series[0].levels
        assert levels[0].shape[:2] == SIZE  # the slide's level-0 size
        assert len(levels) > 1 and levels[1].shape[:2] == (SIZE[0] // 2, SIZE[1] // 2)
        lv = levels[-1].asarray()
    assert lv.dtype == np.uint8 and set(np.unique(lv).tolist()) <= {0, 1}
    # a second run would not replace the prediction: the writer refuses the existing file, naming it
    writer = SlidePredictionWriterd(keys="pred", output_dir=out_dir)
    assert writer.output_path(slide) == pred
    before = pred.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=str(pred)):
        writer({"pred": np.zeros((2, 64, 64), np.float32), "slide_path": str(slide),
                "image_apf": {"leaves": np.zeros((64, 3), np.int64), "mask": np.zeros(64, bool),
                              "spatial_shape": np.array(SIZE), "padded_size": 16384, "patch_size": 8,
                              "level0_shape": np.array(SIZE), "scale": np.float64(1.0)}})
    assert pred.stat().st_mtime_ns == before


def test_bad_slide_found_before_training(data, tmp_path):
    bad = tmp_path / "prepared"
    bad.mkdir()
    body = json.loads((data / "datalist_16384.json").read_text())
    wrong = tmp_path / "wrong_viable.tif"
    tifffile.imwrite(wrong, np.zeros((512, 512), np.uint8), tile=(256, 256))
    body["training"][0]["label"] = str(wrong)
    (bad / "datalist_16384.json").write_text(json.dumps(body))
    proc = run_bundle(TRAIN, "training", check=False, **_io(tmp_path, bad))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    slide = Path(body["training"][0]["image"]).name
    assert last.strip() == f"{wrong}: mask size (512, 512) differs from level 0 of {slide} {SIZE}"
    assert "train_loss" not in proc.stdout + proc.stderr
    # a resolution above the slides' size is refused (the overlay's check, before training), naming the slide
    with pytest.raises(DatasetError, match=r"level 0 is 1024 x 16384 px, below the resolution 32768 \(leaves"):
        check_slide_datalist(data, "datalist_16384.json", resolution=32768)
