"""Inference inputs and outputs (issue 13, item 7): an RGBA PNG is converted (not a crash), an unreadable
input is skipped with its name in the log and a summary at the end while the others are written, and PAIP
predictions are named so they cannot be taken for ground truth, with a viewable 0/255 copy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle_utils import BUNDLES, run_bundle
from PIL import Image

from monai_ext.data.common import DataError
from monai_ext.workflows.inference import match_channels, screen_inputs

PAIP = BUNDLES / "apf_unetr_paip_segmentation"
TINY = {"presets#cpu#hidden_size": 32, "presets#cpu#mlp_dim": 64, "presets#cpu#num_layers": 2,
        "presets#cpu#num_heads": 2, "presets#cpu#feature_size": 8, "presets#cpu#num_tokens": 64}


def test_match_channels():
    rgba = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3)
    assert torch.equal(match_channels(rgba, 3), rgba[:3])
    grey = match_channels(rgba, 1)
    assert torch.allclose(grey[0], 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2])
    assert torch.equal(match_channels(rgba[:1], 3), rgba[:1].repeat(3, 1, 1))
    with pytest.raises(DataError, match="5 channel"):
        match_channels(torch.zeros(5, 2, 2), 3)


def test_screen_inputs(tmp_path, caplog):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    kept = screen_inputs([{"image": str(tmp_path / "ok.png")}, {"image": str(tmp_path / "bad.png")}],
                         channels=3, spatial_dims=2)
    assert [e["image"] for e in kept] == [str(tmp_path / "ok.png")]
    assert kept.skipped[0]["file"] == str(tmp_path / "bad.png") and kept.skipped[0]["reason"]
    assert f"skipping {tmp_path / 'bad.png'}" in caplog.text
    with pytest.raises(DataError, match="no usable input: 1 of 1 skipped"):
        screen_inputs([{"image": str(tmp_path / "bad.png")}], channels=3, spatial_dims=2)
    with pytest.raises(DataError, match="spatial dimension"):  # a 2D image where volumes are expected
        screen_inputs([{"image": str(tmp_path / "ok.png")}], channels=1, spatial_dims=3)


def test_paip_inference_rgba_unreadable_and_viewable_masks(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(PAIP / "configs" / "inference.yaml"))
    for k, v in TINY.items():
        parser[k] = v
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rgb[16:48, 24:72] = (150, 40, 120)  # a smooth region: some detail for the quadtree
    Image.fromarray(rgb).save(tmp_path / "slide_a.png")
    alpha = np.full((64, 96, 1), 255, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(tmp_path / "slide_rgba.png")
    (tmp_path / "slide_broken.png").write_bytes((tmp_path / "slide_a.png").read_bytes()[:100])
    inputs = [tmp_path / "slide_a.png", tmp_path / "slide_broken.png", tmp_path / "slide_rgba.png"]
    out = tmp_path / "inf"
    proc = run_bundle(PAIP, ["inference.yaml"], ckpt_dir=str(tmp_path / "models"), output_dir=str(out),
                      input_files=[str(p) for p in inputs], **TINY)
    log = proc.stdout + proc.stderr
    assert f"skipping {inputs[1]}" in log
    assert "inference: 2 input(s) processed" in log and "1 skipped" in log
    assert json.loads((out / "skipped.json").read_text())[0]["file"] == str(inputs[1])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["skipped.json", "slide_a_prediction.png", "slide_a_prediction_view.png",
                     "slide_rgba_prediction.png", "slide_rgba_prediction_view.png"]
    pred = np.asarray(Image.open(out / "slide_a_prediction.png"))
    assert pred.shape == (64, 96) and set(np.unique(pred)) <= {0, 1}
    assert np.array_equal(np.asarray(Image.open(out / "slide_rgba_prediction.png")), pred)  # alpha dropped
    view = np.asarray(Image.open(out / "slide_a_prediction_view.png"))
    assert np.array_equal(view, pred.astype(np.uint8) * 255)
