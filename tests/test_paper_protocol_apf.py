"""The APF bundles' paper overlays (configs/paper.yaml): the paper's network and APF settings (Tables II/III,
Sec. III-A, IV-C/D), the quadtree rule against an independent implementation of the paper's Eq. (6), a tiny
training run through ``python -m monai.bundle run`` and prepared data that do not match the overlay refused."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from bundle_utils import BUNDLES, run_bundle
from monai.bundle import ConfigParser

from monai_ext.data import btcv, paip
from monai_ext.data.synthetic import btcv as synth_btcv
from monai_ext.networks.attention import SoftmaxAttention
from monai_ext.transforms.apf.quadtree import plan_quadtree

PAIP = BUNDLES / "apf_unetr_paip_segmentation"
BTCV = BUNDLES / "apf_unetr_btcv_segmentation"

# Table III, APF-4 rows: resolution -> (sequence length, quadtree depth); Sec. III-A: blur 3 at 512 ... 7 at 4096+
TABLE_III_APF4 = {512: (676, 7), 1024: (900, 8), 4096: (2116, 10), 8192: (8464, 11), 16384: (8464, 12),
                  32768: (16384, 13)}
BLUR = {512: 3, 1024: 3, 4096: 7, 8192: 7, 16384: 7, 32768: 7, 65536: 7}


def _parser(bundle: Path, *files: str, **overrides) -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(bundle / "configs" / f) for f in files])
    for k, v in overrides.items():
        p[k] = v
    return p


@pytest.mark.parametrize("bundle", [PAIP, BTCV], ids=["paip", "btcv"])
def test_paper_overlay_builds_the_papers_unetr(bundle):
    p = _parser(bundle, "train.yaml", "paper.yaml")
    net = p.get_parsed_content("network_def")
    vit = net.unetr.vit
    # the unmodified UNETR of the paper: ViT-B (12 layers, 12 heads, hidden 768, MLP 3072), softmax attention
    assert len(vit.blocks) == 12 and vit.hidden_size == 768
    assert all(isinstance(b.attn, SoftmaxAttention) and b.attn.num_heads == 12 for b in vit.blocks)
    assert vit.blocks[0].mlp.linear1.out_features == 3072
    assert net.patch_size == 4 and net.num_tokens == 676 and p["network_def"]["feature_size"] != 0
    apf = p.get_parsed_content("apf")
    assert apf["max_depth"] == 7 and apf["blur_kernel"] == 3 and (apf["canny_low"], apf["canny_high"]) == (100, 200)
    loss = p.get_parsed_content("loss")  # Dice + cross-entropy, 0.5 / 0.5
    assert loss.lambda_dice == 0.5 and loss.lambda_ce == 0.5
    opt = p.get_parsed_content("optimizer")
    assert type(opt).__name__ == "AdamW" and opt.defaults["lr"] == pytest.approx(1e-4)
    sched = p.get_parsed_content("lr_scheduler")  # step decay x0.1, not cosine
    assert type(sched).__name__ == "StepLR" and sched.gamma == pytest.approx(0.1)
    assert sched.step_size == p.get_parsed_content("lr_step") < p.get_parsed_content("epochs")
    # train.yaml alone stays the CPU default
    cpu = _parser(bundle, "train.yaml")
    assert cpu["network_def"]["attention"] == "softmax_free" and cpu["preset"] == "cpu"
    assert cpu["lr_scheduler"]["_target_"].endswith("CosineAnnealingLR") and cpu["apf"]["max_depth"] is None


@pytest.mark.parametrize("size", sorted(TABLE_III_APF4))
def test_paip_overlay_follows_table_iii_per_resolution(size):
    apf = _parser(PAIP, "train.yaml", "paper.yaml", image_size=size).get_parsed_content("apf")
    assert (apf["num_tokens"], apf["max_depth"]) == TABLE_III_APF4[size] and apf["blur_kernel"] == BLUR[size]
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the DatasetError raised inside the expression
        _parser(PAIP, "train.yaml", "paper.yaml", image_size=256).get_parsed_content("apf")
    assert "no paper APF setting for image_size 256" in str(err.value.__cause__)


def test_paip_overlay_at_64k_uses_table_iii_apf8():
    """At 65536 px Table III's smallest patch is 8: APF-8, L = 16,384, depth 13; the network takes that patch."""
    p = _parser(PAIP, "train.yaml", "gigapixel.yaml", "paper.yaml", image_size=65536)
    apf = p.get_parsed_content("apf")
    assert (apf["patch_size"], apf["num_tokens"], apf["max_depth"], apf["blur_kernel"]) == (8, 16384, 13, 7)
    assert p.get_parsed_content("network_def#patch_size") == 8


def _paper_tree(e01: np.ndarray, y: int, x: int, size: int, depth: int, min_size: int, v: float, max_depth: int):
    """The paper's Eq. (6), recursively: a node splits into NW, NE, SW, SE while its edge-pixel count > v and its
    depth < max_depth (and its side > the smallest patch); leaves in that (Z) order."""
    if depth < max_depth and size > min_size and e01[y : y + size, x : x + size].sum() > v:
        h = size // 2
        out = []
        for dy, dx in ((0, 0), (0, h), (h, 0), (h, h)):
            out += _paper_tree(e01, y + dy, x + dx, h, depth + 1, min_size, v, max_depth)
        return out
    return [(y, x, size)]


def _internal(leaves) -> set[tuple[int, int, int]]:
    """The split (internal) nodes of a quadtree over a 64 x 64 image, from its leaves."""
    nodes = set()
    for y, x, s in leaves:
        t = 2 * s
        while t <= 64:
            nodes.add((y // t * t, x // t * t, t))
            t *= 2
    return nodes


def _edges(seed: int, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = np.zeros((n, n), np.uint8)
    for _ in range(4):  # a few clusters of edge pixels, as around tissue boundaries
        cy, cx = rng.integers(0, n, 2)
        r = int(rng.integers(2, 12))
        e[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r] = rng.random((min(cy + r, n) - max(cy - r, 0),
                                                                        min(cx + r, n) - max(cx - r, 0))) < 0.3
    return e


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("split_value,max_depth", [(0, 4), (3, 5), (8, 3)])
def test_overlay_mode_is_the_papers_tree_padded_to_L(seed, split_value, max_depth):
    """The overlay's `fixed` mode with split_value and max_depth: exactly the paper's threshold tree, padded with
    masked tokens, whenever that tree fits in L; when it does not, a coarsening of it (every paper leaf inside one
    kept leaf, the whole image covered, at most L leaves) that keeps the splits of most edge pixels."""
    e = _edges(seed)
    ref = _paper_tree(e, 0, 0, 64, 0, 2, split_value, max_depth)
    big = int(np.ceil(np.sqrt(len(ref) + 3))) ** 2
    kw = {"spatial_shape": (64, 64), "edges": e, "patch_size": 2, "split_value": split_value, "max_depth": max_depth}
    meta = plan_quadtree(num_tokens=big, mode="fixed", **kw)
    got = [tuple(r) for r in meta["leaves"][meta["mask"]].tolist()]
    assert got == ref and not meta["mask"][len(ref):].any() and meta["leaves"].shape[0] == big
    thr = plan_quadtree(num_tokens=big, mode="threshold", **kw)
    assert [tuple(r) for r in thr["leaves"][thr["mask"]].tolist()] == ref  # the bundle's threshold mode agrees
    small = 16 if len(ref) > 16 else None
    if small is None:
        return
    with pytest.raises(ValueError, match="more than num_tokens"):  # threshold mode refuses to drop
        plan_quadtree(num_tokens=small, mode="threshold", **kw)
    meta = plan_quadtree(num_tokens=small, mode="fixed", **kw)
    kept = meta["leaves"][meta["mask"]]
    assert len(kept) <= small and (kept[:, 2] ** 2).sum() == 64 * 64  # whole image, no leaf dropped
    for y, x, s in ref:  # each paper leaf lies inside one kept leaf
        assert sum(ky <= y and y + s <= ky + ks and kx <= x and x + s <= kx + ks for ky, kx, ks in kept) == 1
    internal_ref, internal_kept = _internal(ref), _internal(kept.tolist())
    assert internal_kept < internal_ref  # only splits of the paper's tree, some merged back
    count = {n: int(e[n[0] : n[0] + n[2], n[1] : n[1] + n[2]].sum()) for n in internal_ref}
    assert min(count[n] for n in internal_kept) >= max(count[n] for n in internal_ref - internal_kept)


BTCV_TINY = {"presets#paper#hidden_size": 32, "presets#paper#mlp_dim": 64, "presets#paper#num_layers": 2,
             "presets#paper#num_heads": 2, "presets#paper#feature_size": 8}


@pytest.fixture(scope="module")
def btcv_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("btcv_paper")
    synth_btcv.synthesize(root / "raw", cases=4, seed=0, size=(32, 32, 8))
    btcv.prepare(root / "raw", root / "prepared", size=(32, 32, -1), protocol="heldout")
    return root / "prepared"


def test_btcv_paper_overlay_trains_evaluates_on_heldout_test(btcv_data, tmp_path):
    run = functools.partial(run_bundle, BTCV)
    io = dict(dataset_dir=str(btcv_data), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
              log_dir=str(tmp_path / "logs"), num_workers=0, image_size=32, num_samples=2, **BTCV_TINY)
    io["apf#num_tokens"] = 16
    proc = run(["train.yaml", "paper.yaml"], "training", epochs=2, val_interval=1, lr_step=1, **io)
    log = proc.stdout + proc.stderr
    assert "prepared data match the overlay" in log and "val_mean_dice" in log
    run(["train.yaml", "evaluate.yaml", "paper.yaml"], "run", **io)
    listed = json.loads((btcv_data / "datalist.json").read_text())
    test_cases, selection = [e["case"] for e in listed["test"]], [e["case"] for e in listed["validation"]]
    assert test_cases and selection and not set(test_cases) & set(selection)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_cases"] == len(test_cases)
    prov = json.loads((tmp_path / "eval" / "provenance.json").read_text())
    assert prov["run"]["split"] == "test"
    per_case = (tmp_path / "eval" / "per_case.csv").read_text()
    assert all(f"img{c}" in per_case for c in test_cases) and not any(f"img{c}" in per_case for c in selection)

    # data prepared at another slice size / with the 24-6 split: refused before training, naming both values
    bad = run(["train.yaml", "paper.yaml"], "training", check=False, epochs=1, **{**io, "image_size": 64})
    last = (bad.stdout + bad.stderr).strip().splitlines()[-1]
    assert bad.returncode != 0 and "datalist.json" in last and "[32, 32, -1]" in last and "[64, 64, -1]" in last


def test_paip_paper_overlay_tiny_run_and_mismatch(tmp_path):
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    paip.synthesize(raw, cases=4, seed=0, size=512)
    paip.prepare(raw, prepared, resolutions=[512], split=(2, 1, 1))
    tiny = {"presets#paper#hidden_size": 32, "presets#paper#mlp_dim": 64, "presets#paper#num_layers": 2,
            "presets#paper#num_heads": 2, "presets#paper#feature_size": 8}
    io = dict(dataset_dir=str(prepared), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
              log_dir=str(tmp_path / "logs"), num_workers=0, batch_size=2, **tiny)
    io["apf#num_tokens"] = 64  # 512 px as the paper, 64 tokens instead of 676: seconds on a CPU
    proc = run_bundle(PAIP, ["train.yaml", "paper.yaml"], "training", epochs=2, val_interval=2, lr_step=1, **io)
    log = proc.stdout + proc.stderr
    assert "prepared data match the overlay" in log and "val_mean_dice" in log
    # the 512 px datalist named for a 1024 px overlay: refused before training with the datalist and both sizes
    bad = run_bundle(PAIP, ["train.yaml", "paper.yaml"], "training", check=False, epochs=1,
                     **{**io, "image_size": 1024, "datalist": "datalist_512.json", "ckpt_dir": str(tmp_path / "m2")})
    last = (bad.stdout + bad.stderr).strip().splitlines()[-1]
    assert bad.returncode != 0 and "datalist_512.json" in last and "512x512" in last and "1024x1024" in last
    assert not list((tmp_path / "m2").glob("checkpoint_epoch=*.pt"))
