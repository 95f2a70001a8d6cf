"""TCGA-NSCLC on WSI feature sequences: the feature pipeline on the real SVS, the encoder weights mapping, the
TCGA layout's preparation (patient split, bad inputs), the synthetic generators and the WSI transformer."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from monai_ext.cli import main as cli
from monai_ext.data import tcga
from monai_ext.data.synthetic import tcga as synth
from monai_ext.data.wsi_features import read_features, write_features
from monai_ext.features import FeatureSettings, TiledSlide, extract_features
from monai_ext.networks.tile_encoder import build_tile_encoder, resnet50_features
from monai_ext.networks.wsi_transformer import WSITransformer
from monai_ext.utils.checkpoint import CheckpointMismatchError

SVS = Path(__file__).parent / "data" / "cmu_small_region.svs"


# ------------------------------------------------------------------------------------------ feature pipeline
def test_features_on_the_real_svs_shape_tissue_and_resume(tmp_path, caplog):
    out = tmp_path / "features"
    args = ["features", str(SVS), "--out", str(out), "--random-init", "--magnification", "5", "--tile", "112"]
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0
    h5 = out / "h5_files" / "cmu_small_region.h5"
    features, coords = read_features(h5)
    n = features.shape[0]
    assert features.shape == (n, 2048) and n >= 4 and np.isfinite(features).all()
    summary = json.loads((out / "features_rank0.json").read_text())["slides"][0]
    counts = summary["counts"]
    assert counts["kept"] == n and counts["tissue"] == n + counts["background"] + counts["blurred"] < counts["grid"]
    assert "background" in caplog.text and f"-> {n} kept" in caplog.text
    # the slide states MPP 0.499: a 112 px tile at 2 um/px covers 449 level-0 px
    tile0 = summary["tile0"]
    assert tile0 == round(112 * 2.0 / 0.499)
    level0 = tifffile.imread(SVS)[..., :3]  # read independently of the pipeline
    h0, w0 = level0.shape[:2]
    for x, y in coords:
        assert x % tile0 == 0 and y % tile0 == 0 and x + tile0 <= w0 and y + tile0 <= h0
        region = level0[y: y + tile0, x: x + tile0].astype(int)
        coloured = (region.max(-1) - region.min(-1) > 18) & (region.max(-1) < 235)  # stained, not glass
        assert coloured.mean() > 0.3, f"tile at {(x, y)} is not tissue"
    glass = [(x, y) for y in range(0, h0 - tile0 + 1, tile0) for x in range(0, w0 - tile0 + 1, tile0)
             if ((level0[y: y + tile0, x: x + tile0].min(-1) > 200).mean() > 0.9)]
    assert glass and not set(glass) & {tuple(c) for c in coords.tolist()}  # glass-only tiles were not kept

    # resumable: a second run skips the finished slide and leaves its file as it was
    stamp = h5.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0
    assert "already done" in caplog.text and h5.stat().st_mtime_ns == stamp
    assert json.loads((out / "features_rank0.json").read_text())["slides"][0]["status"] == "skipped"


def _tiff(path: Path, resolution: bool) -> Path:
    """A 512 px tiled RGB TIFF: pink tissue disc on white glass (with or without a resolution in cm)."""
    yy, xx = np.mgrid[0:512, 0:512]
    rng = np.random.default_rng(0)
    img = np.full((512, 512, 3), 245, np.uint8)
    disc = (yy - 256) ** 2 + (xx - 256) ** 2 < 200**2
    img[disc] = (rng.random((int(disc.sum()), 1)) * np.array([60, 90, 60]) + np.array([150, 60, 130])).astype(np.uint8)
    kw = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"} if resolution else {}
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", metadata=None, **kw)
    return path


def test_features_mpp_required_sharding_and_partial_files(tmp_path, caplog):
    (tmp_path / "slides").mkdir()
    no_mpp = _tiff(tmp_path / "slides" / "a_no_mpp.tif", resolution=False)
    with_mpp = _tiff(tmp_path / "slides" / "b_mpp.tif", resolution=True)
    assert TiledSlide(with_mpp).mpp == pytest.approx(0.5) and TiledSlide(no_mpp).mpp is None
    out = tmp_path / "out"
    base = ["features", str(tmp_path / "slides"), "--out", str(out), "--random-init", "--tile", "64",
            "--magnification", "10", "--format", "h5", "pt"]
    with caplog.at_level(logging.ERROR):
        assert cli(base) == 1  # one slide failed: no microns per pixel
    assert "a_no_mpp.tif: the file states no microns per pixel" in caplog.text and "--slide-mpp" in caplog.text
    assert (out / "h5_files" / "b_mpp.h5").is_file() and not (out / "h5_files" / "a_no_mpp.h5").exists()
    f_h5, c_h5 = read_features(out / "h5_files" / "b_mpp.h5")
    f_pt, c_pt = read_features(out / "pt_files" / "b_mpp.pt")
    assert np.array_equal(f_h5, f_pt) and np.array_equal(c_h5, c_pt) and f_h5.shape[1] == 2048
    # 64 px at 1 um/px = 128 px of the 0.5 um/px level 0; only tiles (mostly) inside the tissue disc
    assert len(c_h5) >= 4 and all((x + 64 - 256) ** 2 + (y + 64 - 256) ** 2 < 200**2 for x, y in c_h5)

    # a stale partial file of a crashed run is no finished slide; rank 1 of 2 takes slides[1::2] only
    partial = out / "h5_files" / ".a_no_mpp.partial.h5"
    partial.write_bytes(b"half")
    encoder = build_tile_encoder("resnet50", random_init=True)
    settings = FeatureSettings(tile=64, magnification=10, slide_mpp=0.5)
    slides = [no_mpp, with_mpp]
    assert extract_features(slides, out, encoder, settings, rank=1, world=2)[0]["status"] == "skipped"
    done = extract_features(slides, out, encoder, settings, rank=0, world=2)
    assert [r["status"] for r in done] == ["done"] and (out / "h5_files" / "a_no_mpp.h5").is_file()


def test_encoder_weights_retccl_layout_and_refusals(tmp_path):
    torch.manual_seed(0)
    ref = resnet50_features().eval()
    state = {f"module.encoder_q.{k}": v for k, v in ref.state_dict().items()}  # MoCo / DataParallel-style
    state["module.encoder_q.fc.weight"] = torch.zeros(128, 2048)  # RetCCL's projection head: not used
    torch.save(state, tmp_path / "retccl.pth")
    enc = build_tile_encoder("resnet50", tmp_path / "retccl.pth").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x), ref((x - enc.mean) / enc.std), atol=1e-5)
    del state["module.encoder_q.layer4.2.bn3.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match=r"broken\.pth: not ResNet-50 weights.*layer4\.2\.bn3\.weight"):
        build_tile_encoder("resnet50", tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="needs --weights PATH.*nothing is downloaded"):
        build_tile_encoder("resnet50")


# ------------------------------------------------------------------------------------------ TCGA layout
def _small(tmp_path: Path, cases: int = 40) -> Path:
    raw = tmp_path / "raw"
    synth.synthesize(raw, cases=cases, seed=0, min_tokens=20, max_tokens=40, dim=8)
    return raw


def test_prepare_patient_split_and_bad_inputs(tmp_path):
    raw = _small(tmp_path)
    rows = list(csv.DictReader(open(raw / "labels.csv")))
    assert len(rows) == 40 and len({r["case_id"] for r in rows}) < 40  # some patients have two slides
    h5 = sorted((raw / "h5_files").glob("*.h5"))
    # bad inputs: an unknown label, an unreadable file, another feature dimension, a CSV row without a file
    bad_label = rows[0]["slide_id"]
    rows[0]["label"] = "SCLC"
    rows.append({"slide_id": "TCGA-99-ZZZZ-01Z-00-DX1.missing", "case_id": "TCGA-99-ZZZZ", "label": "LUAD"})
    with open(raw / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "label"])
        w.writeheader()
        w.writerows(rows)
    unreadable = h5[1].name.removesuffix(".h5")
    h5[1].write_bytes(b"not an HDF5 file")
    other_dim = h5[2].name.removesuffix(".h5")
    write_features(h5[2], np.ones((5, 3), np.float32), np.zeros((5, 2)))
    datalist = tcga.prepare(raw, tmp_path / "prepared")
    skipped = {s["case"]: s["reason"] for s in json.loads((tmp_path / "prepared" / "skipped.json").read_text())}
    assert "unknown label 'SCLC'" in skipped[bad_label]
    assert "unreadable feature file" in skipped[unreadable]
    assert "feature dimension 3 differs from the cohort's 8" in skipped[other_dim]
    assert "no feature file" in skipped["TCGA-99-ZZZZ-01Z-00-DX1.missing"]
    kept = [e for s in tcga.SPLITS for e in datalist[s]]
    assert len(kept) + 3 == 40 and len(skipped) == 4
    splits_of: dict[str, set[str]] = {}
    for s in tcga.SPLITS:
        assert {e["label"] for e in datalist[s]} == {0, 1}  # stratified: both subtypes everywhere
        for e in datalist[s]:
            splits_of.setdefault(e["case_id"], set()).add(s)
            assert e["case_id"] == e["slide_id"][:12] and e["feature_dim"] == 8
    assert all(len(v) == 1 for v in splits_of.values())  # no patient in two splits
    n = [len({e["case_id"] for e in datalist[s]}) for s in tcga.SPLITS]
    assert n[0] > n[2] > n[1]  # 627 : 270 : 145
    with pytest.raises(ValueError, match="patient\\(s\\) in more than one split: TCGA-05-0001"):
        tcga.check_patient_split({"training": [{"case_id": "TCGA-05-0001"}], "test": [{"case_id": "TCGA-05-0001"}]})


def test_prepare_labels_from_project_folders(tmp_path):
    raw = tmp_path / "raw"
    for i, project in enumerate(["TCGA-LUAD", "TCGA-LUSC"] * 6):
        write_features(raw / project / "h5_files" / f"TCGA-05-{i:04d}-01Z-00-DX1.abc.h5",
                       np.random.default_rng(i).normal(size=(4, 6)), np.zeros((4, 2)))
    write_features(raw / "h5_files" / "TCGA-05-0099-01Z-00-DX1.abc.h5", np.ones((4, 6)), np.zeros((4, 2)))
    datalist = tcga.prepare(raw, tmp_path / "prepared", split=(0.5, 0.25, 0.25))
    entries = [e for s in tcga.SPLITS for e in datalist[s]]
    assert len(entries) == 12 and all(e["label"] == (0 if "LUAD" in e["image"] else 1) for e in entries)
    skipped = json.loads((tmp_path / "prepared" / "skipped.json").read_text())
    assert skipped[0]["case"] == "TCGA-05-0099-01Z-00-DX1.abc" and "no label" in skipped[0]["reason"]


def test_synthetic_features_signal_is_in_a_minority_of_tokens():
    protos = synth._prototypes(0, 32)
    x, tumour = synth.feature_sequence(np.random.default_rng(1), 1, 3000, protos)
    assert x.shape == (3000, 32) and 0.03 < tumour.mean() < 0.3
    # the subtype direction separates the tumour tokens of the two classes far more than the slide means
    x0, t0 = synth.feature_sequence(np.random.default_rng(2), 0, 3000, protos)
    d = protos["subtype"][1] - protos["subtype"][0]
    tumour_gap = (x[tumour] @ d).mean() - (x0[t0] @ d).mean()
    assert tumour_gap > 2.0 and tumour_gap > 2 * abs((x.mean(0) - x0.mean(0)) @ d)


def test_synthetic_slides_are_svs_with_mpp_and_tissue(tmp_path):
    synth.synthesize(tmp_path, cases=2, seed=0, kind="slides", size=512)
    slides = sorted(tmp_path.rglob("*.svs"))
    assert len(slides) == 2 and {p.parent.name for p in slides} == {"TCGA-LUAD", "TCGA-LUSC"}
    from monai_ext.features.pipeline import plan_tiles

    with TiledSlide(slides[0]) as s:
        assert s.mpp == pytest.approx(0.252)
        plan = plan_tiles(s, FeatureSettings(tile=32))
    assert 0 < plan["tissue"] < plan["grid"]


# ------------------------------------------------------------------------------------------ the network
@pytest.mark.parametrize("attention", ["softmax", "softmax_free", "sima"])
def test_wsi_transformer_padding_changes_nothing(attention):
    torch.manual_seed(0)
    net = WSITransformer(16, attention=attention, preset="cpu", pooling="mean").eval()
    x = torch.randn(2, 40, 16)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    x_pad = x.clone()
    x_pad[1, 25:] = 1e4  # whatever the padding holds
    with torch.no_grad():
        y = net(x_pad, mask)
        alone = net(x[1:2, :25])
    assert torch.allclose(y[1], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"expected features \(B, N, 16\)"):
        net(torch.randn(1, 5, 8))


def test_wsi_transformer_paper_preset():
    net = WSITransformer(2048)  # paper_wsi: Table 1, ViTWSI
    assert len(net.blocks) == 2 and net.hidden_size == 512 and net.blocks[0].attn.num_heads == 8
    assert net.blocks[0].mlp.linear1.out_features == 512


def test_token_subsampling_and_padding_collate():
    from monai_ext.workflows.sequences import SubsampleTokensd, pad_collate

    x = torch.arange(20.0).reshape(10, 2)
    item = {"image": x, "coords": torch.arange(20).reshape(10, 2), "label": 1}
    assert torch.equal(SubsampleTokensd("image", 0)(item)["image"], x)  # 0 (CLI) and None: every token
    sub = SubsampleTokensd("image", 4, random=True)
    sub.set_random_state(0)
    out = sub(item)
    idx = (out["image"][:, 0] / 2).long()
    assert len(idx) == 4 and torch.all(idx[1:] > idx[:-1]) and torch.equal(out["coords"], item["coords"][idx])
    assert SubsampleTokensd("image", 4, random=False)(item)["image"][:, 0].tolist() == [0.0, 6.0, 12.0, 18.0]
    batch = pad_collate([item, {**item, "image": x[:3], "coords": item["coords"][:3]}])
    assert batch["image"].shape == (2, 10, 2) and batch["mask"].sum(1).tolist() == [10, 3]
    assert batch["image"][1, 3:].abs().sum() == 0 and (batch["coords"][1, 3:] == -1).all()


class _Payload:
    """Unpickling this would create ``marker`` (it never runs: feature files load weights-only)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pt_feature_file_with_pickled_code_is_refused(tmp_path):
    from monai_ext.data.common import DataError

    marker = tmp_path / "ran"
    path = tmp_path / "pt_files" / "TCGA-05-0001-01Z-00-DX1.x.pt"
    path.parent.mkdir()
    torch.save({"features": torch.ones(3, 4), "coords": torch.zeros(3, 2), "evil": _Payload(marker)}, path)
    with pytest.raises(DataError, match=r"TCGA-05-0001-01Z-00-DX1\.x\.pt: unreadable feature file"):
        read_features(path)
    assert not marker.exists()


def test_slide_tiles_over_the_size_limit_are_refused_before_decoding(monkeypatch):
    from monai_ext.data.limits import ENV_PIXELS
    from monai_ext.features import SlideError

    monkeypatch.setenv(ENV_PIXELS, "1000")  # one 240 x 240 JPEG tile of the SVS is 172,800 values
    with pytest.raises(SlideError, match=r"cmu_small_region\.svs: level 0 tile header declares 240x240x3"):
        TiledSlide(SVS)
