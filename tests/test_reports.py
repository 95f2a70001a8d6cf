"""Evaluation reports: numbers against independent references (scikit-learn, MONAI's metrics, a naive Dice),
determinism of ``metrics.json``, the HTML report in headless Chromium, ``monai-ext report``, bad input, and
one tiny real bundle evaluation (twice, in DDP, with a wrong checkpoint, with an empty test split)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.reports import stats
from monai_ext.reports.checkpoint import CheckpointMismatchError, check_checkpoint
from monai_ext.reports.compare import compare_table
from monai_ext.reports.handler import EvaluationReport
from monai_ext.reports.metric_handlers import SpacedHausdorffDistance
from monai_ext.reports.overlays import SegmentationOverlays
from monai_ext.reports.summary import classification_summary
from monai_ext.reports.writer import read_cases_csv, write_report

ROOT = Path(__file__).resolve().parents[1]
VINDR = ROOT / "bundles" / "vindr_cxr_cardiomegaly_classification"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _binary_records(n: int, seed: int, ties: bool = False, prefix: str = "c") -> list[dict]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * (2 * y - 1))))
    if ties:
        s = np.round(s, 1)
    return [{"case_id": f"{prefix}{i:04d}", "label": int(a), "probability": float(b)}
            for i, (a, b) in enumerate(zip(y, s))]


# ----------------------------------------------------------------------------------------------- classification
@pytest.mark.parametrize("n,seed,ties", [(8, 0, False), (60, 1, True), (300, 2, False)])
def test_auroc_equals_sklearn_and_ci_contains_it(n, seed, ties):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    recs = _binary_records(n, seed, ties)
    y = np.array([r["label"] for r in recs])
    s = np.array([r["probability"] for r in recs])
    val = _binary_records(40, seed + 100, prefix="v")
    m, _ = classification_summary(recs, validation_records=val, n_bootstrap=400, seed=3, min_ci_cases=0)
    auc = m["auroc"]
    assert auc["value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert auc["value"] == 1.0 or auc["ci_high"] - auc["ci_low"] > 0  # a perfect ranking stays perfect
    # the vectorised bootstrap AUROC against scikit-learn on the same resamples
    idx = stats.stratified_bootstrap_indices(y, 5, seed=9)
    for row, b in zip(idx, stats.auroc_bootstrap(s, y, idx)):
        assert b == pytest.approx(roc_auc_score(y[row], s[row]), abs=1e-12)
    # Youden threshold: brute force over every candidate threshold on the validation predictions
    vy = np.array([r["label"] for r in val])
    vs = np.array([r["probability"] for r in val])
    best_j = max(np.mean(vs[vy == 1] >= t) + np.mean(vs[vy == 0] < t) - 1 for t in np.unique(vs))
    sel = m["threshold_selection"]
    assert sel["youden_j"] == pytest.approx(best_j)
    t = sel["threshold"]
    assert np.mean(vs[vy == 1] >= t) + np.mean(vs[vy == 0] < t) - 1 == pytest.approx(best_j)
    for key, thr in (("default", 0.5), ("youden", t)):
        p = m["operating_points"][key]
        assert p["threshold"] == thr
        (tn, fp), (fn, tp) = confusion_matrix(y, (s >= thr).astype(int), labels=[0, 1])
        assert p["confusion_matrix"]["matrix"] == [[tn, fp], [fn, tp]]
        assert p["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
        assert p["specificity"]["value"] == pytest.approx(tn / (tn + fp))
        assert p["accuracy"]["value"] == pytest.approx((tp + tn) / n)
        for name in ("accuracy", "sensitivity", "specificity"):
            assert p[name]["ci_low"] <= p[name]["value"] <= p[name]["ci_high"]


def test_stats_edge_cases_and_input_errors():
    """One-class input, empty bootstraps, zero denominators and bad input: the documented errors and NaNs."""
    for bad_labels in ([1, 1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="ROC needs both classes"):
            stats.roc_curve([0.1, 0.5, 0.9], bad_labels)
        with pytest.raises(ValueError, match="AUROC needs both classes"):
            stats.auroc_bootstrap([0.1, 0.5, 0.9], bad_labels, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        stats.roc_auc([0.1, 0.5, 0.9], [0, 1])
    with pytest.raises(ValueError, match="NaN or inf"):
        stats.roc_auc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, found \[2\]"):
        stats.roc_auc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="bootstrap needs at least one case"):
        stats.bootstrap_indices(0, 5, seed=0)
    idx = stats.bootstrap_indices(1, 4, seed=0)
    assert idx.shape == (4, 1) and not idx.any()
    idx = stats.bootstrap_indices(7, 300, seed=1)
    assert idx.shape == (300, 7) and idx.min() == 0 and idx.max() == 6
    # one class only: stratified rows keep the class that exists (no empty draw from the other)
    for y in (np.array([1, 1, 1]), np.array([0, 0, 0, 0])):
        idx = stats.stratified_bootstrap_indices(y, 6, seed=2)
        assert idx.shape == (6, y.size) and set(idx.ravel().tolist()) <= set(range(y.size))
    y = np.array([0, 1, 0, 1, 1])
    idx = stats.stratified_bootstrap_indices(y.reshape(5, 1), 50, seed=3)  # any shape of labels
    assert idx.shape == (50, 5) and np.all(y[idx[:, :3]] == 1) and np.all(y[idx[:, 3:]] == 0)
    assert len({tuple(r) for r in idx}) > 10  # resamples differ
    r = stats.rates_from_confusion(tn=np.array([0, 3]), fp=np.array([0, 1]), fn=np.array([2, 0]), tp=np.array([2, 0]))
    np.testing.assert_array_equal(r["accuracy"], [0.5, 0.75])
    np.testing.assert_array_equal(r["sensitivity"], [0.5, np.nan])
    np.testing.assert_array_equal(r["specificity"], [np.nan, 0.75])
    r = stats.rates_from_confusion(1, 2, 3, 4)
    assert (r["accuracy"], r["sensitivity"], r["specificity"]) == (0.5, 4 / 7, 1 / 3)
    with pytest.raises(ValueError, match="probabilities in"):
        stats.calibration_bins([0.5, 1.5], [0, 1])
    # ties: every distinct score once, thresholds decreasing, and the trapezoid counts a tie 1/2
    fpr, tpr, thr = stats.roc_curve([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.5])
    np.testing.assert_array_equal(fpr, [0, 0, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1])
    assert stats.roc_auc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == 0.75
    assert stats.youden_threshold([0.2, 0.4, 0.6, 0.8], [0, 0, 1, 1]) == (0.6, 1.0)
    assert stats.confusion_at([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1], 0.6) == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    lo, hi = stats.percentile_ci(np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]]), level=0.5)
    np.testing.assert_array_equal(lo, [1.5, np.nan])
    np.testing.assert_array_equal(hi, [2.5, np.nan])


def test_calibration_against_naive_binning():
    """Bins [0, 0.1], (0.1, 0.2], ... (scikit-learn's ``calibration_curve``): a probability on an edge falls into
    the lower bin; counts, ECE and Brier score against a plain loop."""
    recs = _binary_records(200, 5)
    y = np.array([r["label"] for r in recs] + [1, 0, 1, 0])
    s = np.array([r["probability"] for r in recs] + [0.5, 0.5, 0.3, 0.0])  # on bin edges
    cal = stats.calibration_bins(s, y, 10)
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        sel = ((s > lo) | (b == 0)) & (s <= hi)
        assert cal["count"][b] == sel.sum()
        if sel.any():
            ece += sel.sum() / s.size * abs(y[sel].mean() - s[sel].mean())
            assert cal["fraction_positive"][b] == pytest.approx(y[sel].mean())
            assert cal["mean_predicted"][b] == pytest.approx(s[sel].mean())
        else:
            assert np.isnan(cal["fraction_positive"][b]) and np.isnan(cal["mean_predicted"][b])
    assert cal["ece"] == pytest.approx(ece)
    assert cal["brier"] == pytest.approx(np.mean((s - y) ** 2))


def _plain_percentiles(values: list[float], level: float) -> tuple[float, float]:
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [a, 100 - a])
    return float(lo), float(hi)


def _plain_stratified_resamples(y: np.ndarray, n_samples: int, seed: int) -> list[np.ndarray]:
    """The documented resampling (``default_rng(seed)``; all positive draws, then all negative draws)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    ip = rng.integers(0, pos.size, size=(n_samples, pos.size))
    ineg = rng.integers(0, neg.size, size=(n_samples, neg.size))
    return [np.r_[pos[a], neg[b]] for a, b in zip(ip, ineg)]


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_classification_ci_equals_plain_bootstrap_loop(level):
    """AUROC, sensitivity and specificity CIs = ``np.percentile`` over scikit-learn on the same resamples."""
    from sklearn.metrics import roc_auc_score

    recs = _binary_records(70, 11)
    y = np.array([r["label"] for r in recs])
    s = np.array([r["probability"] for r in recs])
    m, _ = classification_summary(recs, n_bootstrap=200, seed=4, ci_level=level)
    assert m["bootstrap"]["ci_level"] == level
    rows = _plain_stratified_resamples(y, 200, 4)
    for row in rows:  # stratified: every resample keeps the class counts
        assert int(y[row].sum()) == int(y.sum())
    aucs = [roc_auc_score(y[r], s[r]) for r in rows]
    lo, hi = _plain_percentiles(aucs, level)
    assert (m["auroc"]["ci_low"], m["auroc"]["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    p = m["operating_points"]["default"]
    for name, cls in (("sensitivity", 1), ("specificity", 0)):
        vals = [np.mean((s[r][y[r] == cls] >= 0.5) == cls) for r in rows]  # recall of the class
        lo, hi = _plain_percentiles(vals, level)
        assert (p[name]["ci_low"], p[name]["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))


@pytest.mark.parametrize("level,grid", [(0.95, None), (0.8, [0.0, 0.1, 0.25, 0.5, 1.0])])
def test_roc_band_equals_plain_bootstrap_loop(level, grid):
    """The ROC figure's band: per resample scikit-learn's ROC curve (all points) interpolated on the FPR grid,
    then ``np.percentile`` per grid point."""
    from sklearn.metrics import roc_curve

    recs = _binary_records(40, 12, ties=True)
    y = np.array([r["label"] for r in recs])
    s = np.array([r["probability"] for r in recs])
    idx = stats.stratified_bootstrap_indices(y, 60, seed=8)
    band = stats.roc_band(s, y, idx, grid=grid, level=level)
    fpr_grid = np.linspace(0, 1, 101) if grid is None else np.asarray(grid)
    np.testing.assert_array_equal(band["fpr"], fpr_grid)
    curves = []
    for row in idx:
        fpr, tpr, _ = roc_curve(y[row], s[row], drop_intermediate=False)
        curves.append(np.interp(fpr_grid, fpr, tpr))
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.array(curves), [a, 100 - a], axis=0)
    np.testing.assert_allclose(band["tpr_low"], lo, atol=1e-12)
    np.testing.assert_allclose(band["tpr_high"], hi, atol=1e-12)
    assert np.any(hi > lo)


def test_segmentation_ci_equals_plain_bootstrap_loop():
    """Dice CIs (per class, MONAI mean, mean over classes) = ``np.percentile`` over a plain loop on the same
    case resamples (``default_rng(seed).integers``), NaN (class absent) left out as MONAI does."""
    from monai_ext.reports import segmentation_summary

    rng = np.random.default_rng(2)
    dice = rng.uniform(0.2, 0.95, size=(12, 3))
    dice[rng.random((12, 3)) < 0.2] = np.nan
    dice[0] = [0.5, np.nan, 0.7]  # a NaN in class b whatever the draw
    recs = [{"case_id": f"k{i:02d}", "dice": d.tolist()} for i, d in enumerate(dice)]
    m, _ = segmentation_summary(recs, ["a", "b", "c"], n_bootstrap=250, seed=6, min_ci_cases=0)
    rows = np.random.default_rng(6).integers(0, 12, size=(250, 12))
    for c, name in enumerate("abc"):
        col = dice[:, c]
        vals = [np.mean(col[r][~np.isnan(col[r])]) for r in rows]
        lo, hi = _plain_percentiles(vals, 0.95)
        got = m["dice"]["per_class"][name]
        assert got["value"] == pytest.approx(np.mean(col[~np.isnan(col)]), abs=1e-12)
        assert got["n_cases"] == int(np.sum(~np.isnan(col)))
        assert (got["ci_low"], got["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    case_means = [np.mean([np.mean(d[~np.isnan(d)]) for d in dice[r]]) for r in rows]  # MONAI's MEAN reduction
    lo, hi = _plain_percentiles(case_means, 0.95)
    assert (m["dice"]["mean"]["ci_low"], m["dice"]["mean"]["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    macro = [np.mean([np.mean(dice[r, c][~np.isnan(dice[r, c])]) for c in range(3)]) for r in rows]
    lo, hi = _plain_percentiles(macro, 0.95)
    got = m["dice"]["mean_over_classes"]
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_metrics_json_byte_identical_and_order_free(tmp_path):
    recs = _binary_records(80, 7)
    val = _binary_records(30, 8, prefix="v")
    shuffled = [recs[i] for i in np.random.default_rng(0).permutation(len(recs))]
    write_report(tmp_path / "a", "classification", recs, {"run": {"name": "a"}}, validation_records=val)
    write_report(tmp_path / "b", "classification", shuffled, {"run": {"name": "b"}}, validation_records=val[::-1])
    a, b = (tmp_path / "a" / "metrics.json").read_bytes(), (tmp_path / "b" / "metrics.json").read_bytes()
    assert a == b
    assert (tmp_path / "a" / "per_case.csv").read_bytes() == (tmp_path / "b" / "per_case.csv").read_bytes()
    write_report(tmp_path / "c", "classification", recs, {}, validation_records=val, seed=1)
    assert (tmp_path / "c" / "metrics.json").read_bytes() != a  # the seed drives the bootstrap
    body = json.loads(a)
    assert "NaN" not in a.decode() and "time" not in a.decode()
    assert list(body) == sorted(body)


# ----------------------------------------------------------------------------------------------- segmentation
K = 4  # background + 3 classes


class _Rounder(torch.nn.Module):
    """Logits whose argmax is the class nearest to ``image * (K - 1)``: a noisy segmenter."""

    def forward(self, x):
        c = torch.arange(K, dtype=x.dtype, device=x.device).view(1, K, *([1] * (x.ndim - 2)))
        return -((x * (K - 1) - c) ** 2)


def _seg_data(n: int, shape: tuple[int, ...], seed: int) -> list[dict]:
    from monai.data import MetaTensor

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lab = np.zeros(shape, np.int64)
        for k in range(1, K):
            if rng.random() < 0.8:  # some classes absent: NaN Dice / HD95 as in MONAI
                c = [int(rng.integers(1, max(2, s - 5))) for s in shape]
                lab[tuple(slice(ci, ci + int(rng.integers(3, 6))) for ci in c)] = k
        img = lab / (K - 1) + rng.normal(0, 0.09, shape)
        aff = torch.tensor(np.diag([0.8, 0.8, 2.5, 1.0]) if len(shape) == 3 else np.diag([0.5, 0.5, 1.0]))
        meta = {"filename_or_obj": f"/data/case{i:02d}.nii.gz"}
        out.append({"image": MetaTensor(torch.tensor(img[None], dtype=torch.float32), affine=aff, meta=meta),
                    "label": MetaTensor(torch.tensor(lab[None]), affine=aff, meta=dict(meta))})
    return out


def _seg_evaluate(tmp: Path, shape: tuple[int, ...], apf: dict | None, spacing: str | None = "affine",
                  saver: bool = False, **kw):
    """The evaluate.yaml shape: MONAI's MeanDice and the spaced HD95 with save_details (each computed once),
    optionally MONAI's MetricsSaver, the overlays and the report reading the details."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MeanDice, MetricsSaver, from_engine
    from monai.transforms import AsDiscreted, Compose

    data = _seg_data(5, shape, 0)
    report = EvaluationReport(tmp, task="segmentation", class_names=["background", "a", "b", "c"], apf=apf,
                              n_bootstrap=200, config={"test": True}, name="synthetic_seg", **kw)
    handlers = [SegmentationOverlays(apf=apf), report]
    if saver:
        handlers.insert(0, MetricsSaver(str(tmp), metrics="*", metric_details="*",
                                        batch_transform=lambda x: [xx["image"].meta for xx in x]))
    post = Compose([AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[K, K])])
    pl = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=DataLoader(Dataset(data), batch_size=2), network=_Rounder(), postprocessing=post,
        key_val_metric={"mean_dice": MeanDice(include_background=False, output_transform=pl)},
        additional_metrics={"hd95": SpacedHausdorffDistance(spacing=spacing, percentile=95, output_transform=pl)},
        val_handlers=handlers)
    evaluator.run()
    return report, data


@pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class")
@pytest.mark.parametrize("shape,apf", [((14, 14, 5), None),
                                       ((32, 32), {"patch_size": 4, "num_tokens": 16, "mode": "fixed"})])
def test_segmentation_dice_and_hd95_match_monai(tmp_path, shape, apf):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    _, data = _seg_evaluate(tmp_path, shape, apf)
    recs, names = read_cases_csv(tmp_path / "per_case.csv", "segmentation")
    assert names == ["a", "b", "c"] and [r["case_id"] for r in recs] == [f"case{i:02d}" for i in range(5)]
    net = _Rounder()
    dice_ref = DiceMetric(include_background=False, reduction="mean")
    batch_ref = DiceMetric(include_background=False, reduction="mean_batch")
    spacing = [0.8, 0.8, 2.5] if len(shape) == 3 else [0.5, 0.5]
    for rec, item in zip(recs, data):
        pred = torch.argmax(net(item["image"].as_tensor()[None]), dim=1)[0].numpy()
        lab = item["label"].as_tensor()[0].numpy()
        for c in range(1, K):  # naive Dice; NaN when the ground truth lacks the class (MONAI's ignore_empty)
            a, b = pred == c, lab == c
            naive = np.nan if not b.any() else 2 * np.sum(a & b) / (a.sum() + b.sum())
            np.testing.assert_allclose(rec["dice"][c - 1], naive, atol=1e-6, equal_nan=True)
        p1 = one_hot(torch.tensor(pred)[None, None], K)
        y1 = one_hot(torch.tensor(lab)[None, None], K)
        dice_ref(p1, y1)
        batch_ref(p1, y1)
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p1, y1, spacing=spacing)
        np.testing.assert_allclose(rec["hd95"], hd[0].numpy(), atol=1e-5, equal_nan=True)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["dice"]["mean"]["value"] == pytest.approx(float(dice_ref.aggregate()), abs=1e-6)
    per_class = batch_ref.aggregate().numpy()
    for c, name in enumerate(["a", "b", "c"]):
        d = m["dice"]["per_class"][name]
        assert d["value"] == pytest.approx(float(per_class[c]), abs=1e-6)
        assert d["ci_low"] is None and d["ci_note"] == f"n={d['n_cases']} < 10: no CI"  # 5 cases: too few
    assert m["hd95"]["unit"] == "mm"
    assert (tmp_path / "dice_boxplot.png").is_file()
    assert len(list(tmp_path.glob("overlay_*.png"))) == 4
    n_images = shape[-1] if len(shape) == 3 else 1
    assert m["n_images"] == 5 * n_images
    if apf is not None:
        from monai_ext.transforms import plan_quadtree

        leaves = [plan_quadtree(item["image"].numpy(), **apf)["num_leaves"] for item in data]
        assert m["apf"]["mean_leaves_per_image"] == pytest.approx(np.mean(leaves))
        assert m["apf"]["num_tokens"] == 16
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["config"]["sha256"] == hashlib.sha256(b'{"test":true}').hexdigest()


@pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class")
def test_hd95_one_unit_in_metrics_saver_and_report(tmp_path):
    """HD95 in one unit everywhere: MONAI's MetricsSaver (hd95_raw.csv, metrics.csv) and the report (per_case.csv,
    metrics.json) hold the same per-case numbers -- the report reads the evaluator's metric details -- equal to
    MONAI's metric with the affine's spacing (mm); with spacing=None both are in voxels. (Before, the BTCV
    hd95_raw.csv was in voxels and metrics.json in mm.)"""
    import csv

    from monai.metrics import HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    for shape, spacing, unit in (((14, 14, 5), "affine", "mm"), ((32, 32), None, "voxel")):
        out = tmp_path / unit
        _, data = _seg_evaluate(out, shape, None, spacing=spacing, saver=True)
        with open(out / "hd95_raw.csv", newline="") as f:
            raw = {Path(r["filename"]).name.replace(".nii.gz", ""): r for r in csv.DictReader(f)}
        recs, _ = read_cases_csv(out / "per_case.csv", "segmentation")
        assert sorted(raw) == [r["case_id"] for r in recs]
        ref = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        mm = {"spacing": [0.8, 0.8, 2.5]} if spacing else {}
        for rec, item in zip(recs, data):
            pred = torch.argmax(_Rounder()(item["image"].as_tensor()[None]), dim=1)
            want = ref(one_hot(pred[:, None], K), one_hot(item["label"].as_tensor()[None].long(), K), **mm)[0].numpy()
            np.testing.assert_allclose(rec["hd95"], want, atol=1e-5, equal_nan=True)
            got_raw = [float(raw[rec["case_id"]][f"class{c}"]) for c in range(K - 1)]
            np.testing.assert_allclose(got_raw, want, atol=1e-5, equal_nan=True)
        m = json.loads((out / "metrics.json").read_text())
        assert m["hd95"]["unit"] == unit
        saved = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
        assert float(saved["hd95"]) == pytest.approx(m["hd95"]["mean"]["value"], abs=1e-5)
        assert float(saved["mean_dice"]) == pytest.approx(m["dice"]["mean"]["value"], abs=1e-5)


def test_report_reads_metric_details_and_says_which_are_missing(tmp_path):
    """The report computes no metric: without the evaluator's MeanDice details it stops with what to add."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import AsDiscreted

    post = AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[K, K])
    report = EvaluationReport(tmp_path, task="segmentation", class_names=["background", "a", "b", "c"])
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=DataLoader(Dataset(_seg_data(2, (16, 16), 1))),
                                    network=_Rounder(), postprocessing=post, val_handlers=[report])
    with pytest.raises(KeyError, match="add a MeanDice metric named 'mean_dice' with save_details=True"):
        evaluator.run()
    assert not (tmp_path / "metrics.json").exists()


# ----------------------------------------------------------------------------------------------- HTML in Chromium
def _chromium(args: list[str], tmp: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


_CHECK_SCRIPT = ('<script>window.addEventListener("load",function(){var i=Array.prototype.slice.call(document.images);'
                 'var d=document.createElement("div");d.id="img-check";d.setAttribute("data-total",i.length);'
                 'd.setAttribute("data-loaded",i.filter(function(x){return x.complete&&x.naturalWidth>0}).length);'
                 'document.body.appendChild(d);});</script></body>')


@pytest.mark.skipif(CHROMIUM is None,
                    reason="Chromium not installed (Debian: apt-get install -y chromium); CI installs it")
def test_html_report_renders_with_figures_in_chromium(tmp_path):
    from PIL import Image

    cls_dir, seg_dir = tmp_path / "cls", tmp_path / "seg"
    write_report(cls_dir, "classification", _binary_records(60, 3), {"run": {"name": "synthetic"}},
                 validation_records=_binary_records(30, 4, prefix="v"), n_bootstrap=200)
    _seg_evaluate(seg_dir, (32, 32), {"patch_size": 4, "num_tokens": 16, "mode": "fixed"})
    for folder, n_fig in ((cls_dir, 2), (seg_dir, 5)):
        html = (folder / "report.html").read_text()
        assert html.count('src="data:image/png;base64,') == n_fig and "src=\"http" not in html  # self-contained
        probe = tmp_path / f"{folder.name}_probe.html"
        probe.write_text(html.replace("</body>", _CHECK_SCRIPT))
        dom = _chromium(["--dump-dom", probe.as_uri()], tmp_path / f"{folder.name}_profile1")
        m = re.search(r'id="img-check" data-total="(\d+)" data-loaded="(\d+)"', dom.stdout)
        assert m, f"no image check in the DOM (rc {dom.returncode}): {dom.stderr[-2000:]}"
        assert int(m.group(1)) == n_fig and int(m.group(2)) == n_fig, m.group(0)
        shot = tmp_path / f"{folder.name}.png"
        _chromium([f"--screenshot={shot}", "--window-size=1200,2000", (folder / "report.html").as_uri()],
                  tmp_path / f"{folder.name}_profile2")
        assert shot.is_file(), "Chromium wrote no screenshot"
        px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        assert px.shape[:2] == (2000, 1200)
        # text and tables are grey; only the figures (curves, histograms, overlays) have saturated colours
        colourful = (px.max(-1) - px.min(-1)) > 80
        assert colourful.sum() > 1000, "the figures did not render in the screenshot"
        assert (px.sum(-1) < 600).mean() > 0.02  # not a blank page


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_build_and_compare(tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from monai_ext.cli import main

    test_csv, val_csv = tmp_path / "test.csv", tmp_path / "val.csv"
    for path, recs in ((test_csv, _binary_records(50, 11)), (val_csv, _binary_records(30, 12, prefix="v"))):
        path.write_text("case_id,label,probability\n" + "".join(
            f"{r['case_id']},{r['label']},{r['probability']:.6f}\n" for r in recs))
    out = tmp_path / "built"
    assert main(["report", "build", "--task", "classification", "--cases", str(test_csv), "--validation-cases",
                 str(val_csv), "--out", str(out), "--n-bootstrap", "200"]) == 0
    recs, _ = read_cases_csv(test_csv, "classification")
    m = json.loads((out / "metrics.json").read_text())
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score([r["label"] for r in recs],
                                                              [r["probability"] for r in recs]), abs=1e-6)
    # a second threshold given instead of validation cases: a number, or an earlier metrics.json
    for given, source in (("0.4", "threshold argument"), (str(out / "metrics.json"), str(out / "metrics.json"))):
        out2 = tmp_path / f"built_threshold_{len(source)}"
        assert main(["report", "build", "--task", "classification", "--cases", str(test_csv), "--threshold", given,
                     "--out", str(out2), "--n-bootstrap", "50"]) == 0
        sel = json.loads((out2 / "metrics.json").read_text())["threshold_selection"]
        want = 0.4 if given == "0.4" else m["threshold_selection"]["threshold"]
        assert sel == {"method": "given", "source": source, "threshold": pytest.approx(want)}
    # a Table-2-like comparison: the attention type read from provenance.json
    folders = []
    for att, seed in (("softmax", 1), ("sima", 2), ("softmax_free", 3)):
        d = tmp_path / f"eval_{att}"
        write_report(d, "classification", _binary_records(40, seed), n_bootstrap=100,
                     provenance={"run": {"name": "vindr", "variant": {"attention": att, "image_size": 224}},
                                 "timing": {"seconds_per_case": 0.01}})
        folders.append(d)
    seg = []
    for mode, tokens in (("fixed", 100), ("uniform", 256)):
        d = tmp_path / f"seg_{mode}"
        recs = [{"case_id": f"s{i}", "dice": [0.5 + 0.1 * i, 0.7], "hd95": [3.0, 4.0], "num_images": 2,
                 "num_leaves": tokens - 10} for i in range(3)]
        write_report(d, "segmentation", recs, class_names=["liver", "tumour"], n_bootstrap=100,
                     apf={"mode": mode, "num_tokens": tokens, "patch_size": 4},
                     provenance={"run": {"name": "btcv", "variant": {"attention": "softmax_free"}},
                                 "timing": {"seconds_per_image": 0.05, "seconds_per_case": 0.1}})
        seg.append(d)
    table_md = tmp_path / "table.md"
    assert main(["report", "compare", *map(str, folders + seg), "--out", str(table_md)]) == 0
    text = table_md.read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| Dataset | ViT"))
    want = ["Dataset", "ViT (softmax)", "SimA", "softmax-free (ours)"]
    assert [c.strip() for c in header.strip("|").split("|")] == want
    row = next(ln for ln in text.splitlines() if ln.startswith("| vindr (224 px)"))
    for d in folders:
        a = json.loads((d / "metrics.json").read_text())["auroc"]
        assert f"{a['value']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})" in row
    assert re.search(r"\| btcv \| APF-UNETR \| softmax_free \| 4 \| 100 \| 90\.0 \| 0\.0500 \|", text)
    assert re.search(r"\| btcv \| UNETR \(uniform patches\) \| softmax_free \| 4 \| 256 \| 246\.0 \|", text)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        compare_table([tmp_path])


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors(tmp_path):
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    from monai_ext.networks import ViT

    kw = {"in_channels": 1, "patch_size": 16, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2,
          "spatial_dims": 2, "classification": True, "num_classes": 2}
    net64 = ViT(img_size=(64, 64), **kw)
    ckpt = tmp_path / "model.pt"
    torch.save(ViT(img_size=(32, 32), **kw).state_dict(), ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"model\.pt does not match the network ViT: .*shape mismatch"):
        check_checkpoint(ckpt, net64)
    torch.save({"model": ViT(img_size=(64, 64), **{**kw, "num_layers": 2}).state_dict()}, ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key\(s\): blocks\.1\."):
        check_checkpoint(ckpt, net64)
    torch.save({"model": net64.state_dict()}, ckpt)
    check_checkpoint(ckpt, torch.nn.parallel.DataParallel(net64))  # fits (wrapped networks are unwrapped)
    with pytest.raises(FileNotFoundError, match="nowhere.pt not found"):
        check_checkpoint(tmp_path / "nowhere.pt", net64)
    with pytest.raises(TypeError, match=r"no longer takes \['hd95_spacing'\].*SpacedHausdorffDistance"):
        EvaluationReport(tmp_path / "out", task="segmentation", hd95_spacing="affine")  # the former handler's option

    empty = SupervisedEvaluator(device="cpu", val_data_loader=DataLoader(Dataset([]), batch_size=1), network=net64)
    with pytest.raises(ValueError, match=r"evaluation split is empty \(dl\.json, split 'test'\)"):
        EvaluationReport(tmp_path / "out", datalist_path="dl.json").attach(empty)

    data = [{"image": torch.rand(1, 64, 64), "label": 1}, {"image": torch.rand(1, 64, 64), "label": 0}]
    logits = SupervisedEvaluator(device="cpu", val_data_loader=DataLoader(Dataset(data), batch_size=2), network=net64,
                                 val_handlers=[EvaluationReport(tmp_path / "out")])
    with pytest.raises(ValueError, match="does not hold class probabilities"):
        logits.run()  # no softmax in the postprocessing
    with pytest.raises(ValueError, match="validation_data needs the evaluator's postprocessing"):
        EvaluationReport(tmp_path, validation_data=data)


# ----------------------------------------------------------------------------------------------- a real bundle
def _bundle_cmd(configs: list[str], **overrides) -> list[str]:
    files = [str(VINDR / "configs" / c) for c in configs]
    cmd = ["-m", "monai.bundle", "run", "--config_file", json.dumps(files).replace('"', "'"),
           "--meta_file", str(VINDR / "configs" / "metadata.json"),
           "--logging_file", str(VINDR / "configs" / "logging.conf")]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def _run(cmd: list[str], check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=VINDR, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def vindr_eval(tmp_path_factory):
    """Tiny VinDr-CXR data (64 px) and an (untrained) checkpoint of the bundle's network."""
    from monai.bundle import ConfigParser

    from monai_ext.data import vindr_cxr

    root = tmp_path_factory.mktemp("vindr_report")
    vindr_cxr.synthesize(root / "raw", cases=40, seed=0)
    vindr_cxr.prepare(root / "raw", root / "prepared", resolutions=[64])
    body = json.loads((root / "prepared" / "datalist_64.json").read_text())
    assert {e["label"] for e in body["test"]} == {0, 1} and {e["label"] for e in body["validation"]} == {0, 1}
    parser = ConfigParser()
    parser.read_config(str(VINDR / "configs" / "train.yaml"))
    parser["image_size"] = 64
    torch.manual_seed(0)
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    io = {"image_size": 64, "dataset_dir": root / "prepared", "ckpt_dir": root / "models",
          "log_dir": root / "logs", "num_workers": 0}
    return root, io


def test_bundle_evaluation_twice_byte_identical_and_ddp(vindr_eval):
    from sklearn.metrics import roc_auc_score

    root, io = vindr_eval
    for name, bs in (("eval_a", 4), ("eval_b", 3)):
        _run([sys.executable, *_bundle_cmd(["train.yaml", "evaluate.yaml"], output_dir=root / name, batch_size=bs,
                                           report_bootstrap=300, **io)])
    a, b = root / "eval_a", root / "eval_b"
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    for f in ("per_case.csv", "validation_per_case.csv", "roc.png", "reliability.png", "report.md", "report.html",
              "provenance.json", "config.json", "metrics.csv", "predictions.csv"):
        assert (a / f).is_file(), f  # the report's files and MetricsSaver / ClassificationSaver's, as before
    m = json.loads((a / "metrics.json").read_text())
    recs, _ = read_cases_csv(a / "per_case.csv", "classification")
    n_test = len(json.loads((io["dataset_dir"] / "datalist_64.json").read_text())["test"])
    assert m["n_cases"] == len(recs) == n_test
    want_auc = roc_auc_score([r["label"] for r in recs], [r["probability"] for r in recs])
    assert m["auroc"]["value"] == pytest.approx(want_auc, abs=1e-5)
    monai_auroc = float((a / "metrics.csv").read_text().split(",")[1])  # MONAI's ROCAUC handler
    assert m["auroc"]["value"] == pytest.approx(monai_auroc, abs=1e-5)
    if n_test >= 10:
        assert m["auroc"]["ci_low"] <= m["auroc"]["value"] <= m["auroc"]["ci_high"]
    else:  # too few test cases for a CI: none, and the reason
        assert m["auroc"]["ci_low"] is None and m["auroc"]["ci_note"] == f"n={n_test} < 10: no CI"
    assert m["threshold_selection"]["method"] == "youden" and m["threshold_selection"]["split"] == "validation"
    prov = json.loads((a / "provenance.json").read_text())
    model = io["ckpt_dir"] / "model.pt"
    assert prov["files"]["checkpoint"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert prov["run"]["variant"] == {"attention": "softmax_free", "image_size": 64, "preset": "cpu"}
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["image_size"] == 64 and "validate" in cfg  # the resolved config: overrides applied
    assert prov["config"]["sha256"] == hashlib.sha256(
        json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert prov["git"].get("commit") or prov["git"].get("note")

    # DDP: two CPU processes, each evaluates half of the test and validation splits; rank 0 writes the same file
    ddp = root / "eval_ddp"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
          *_bundle_cmd(["train.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"], output_dir=ddp, batch_size=2,
                       report_bootstrap=300, **io)])
    assert (ddp / "metrics.json").read_bytes() == (a / "metrics.json").read_bytes()
    assert json.loads((ddp / "provenance.json").read_text())["world_size"] == 2


def test_bundle_wrong_checkpoint_and_empty_split(vindr_eval, tmp_path):
    _, io = vindr_eval
    proc = _run([sys.executable, *_bundle_cmd(["train.yaml", "evaluate.yaml"], output_dir=tmp_path / "out",
                                              **{**io, "network_def#num_layers": 2})], check=False)
    assert proc.returncode != 0
    assert f"checkpoint {io['ckpt_dir'] / 'model.pt'} does not match the network ViT" in proc.stderr
    assert "unexpected key(s): blocks.2." in proc.stderr and not (tmp_path / "out" / "metrics.json").exists()

    body = json.loads((io["dataset_dir"] / "datalist_64.json").read_text())
    for split in ("training", "validation"):
        for e in body[split]:
            e["image"] = str(io["dataset_dir"] / e["image"])
    body["test"] = []
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "datalist_64.json").write_text(json.dumps(body))
    proc = _run([sys.executable, *_bundle_cmd(["train.yaml", "evaluate.yaml"], output_dir=tmp_path / "out2",
                                              **{**io, "dataset_dir": empty})], check=False)
    assert proc.returncode != 0 and "split 'test' is empty" in proc.stderr
