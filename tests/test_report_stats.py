"""``monai_ext.reports.stats`` against plain references: brute-force ROC points, documented defaults, the
seeded resampling, one-class input and warnings (blind spots found by mutation testing, see docs/testing.md)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from monai_ext.reports import stats


def _brute_roc(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (``score >= t`` is positive), highest first, after ``+inf``."""
    thr = np.r_[np.inf, np.unique(s)[::-1]]
    fpr = np.array([np.mean(s[y == 0] >= t) for t in thr])
    tpr = np.array([np.mean(s[y == 1] >= t) for t in thr])
    return fpr, tpr, thr


def test_roc_curve_keeps_every_point_and_matches_brute_force():
    rng = np.random.default_rng(0)
    y = np.r_[0, 1, rng.integers(0, 2, 58)]
    s = np.round(rng.uniform(0, 1, 60) + 0.3 * y, 2)
    s[:6] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # collinear points, which drop_intermediate would remove
    y[:6] = [0, 0, 0, 0, 0, 0]
    for got, ref in zip(stats.roc_curve(s, y), _brute_roc(s, y)):
        np.testing.assert_allclose(got, ref, atol=1e-12)
    fpr, tpr, _ = _brute_roc(s, y)
    assert stats.roc_auc(s, y) == pytest.approx(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def test_confusion_at_and_rates_on_one_class_and_edges():
    assert stats.confusion_at([0.1, 0.2, 0.3], [0, 0, 0], 0.5) == {"tn": 3, "fp": 0, "fn": 0, "tp": 0}
    assert stats.confusion_at([0.6, 0.7], [1, 1], 0.5) == {"tn": 0, "fp": 0, "fn": 0, "tp": 2}
    assert stats.confusion_at([0.5, 0.5, 0.4], [0, 1, 1], 0.5) == {"tn": 0, "fp": 1, "fn": 1, "tp": 1}  # on the edge
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zero denominator gives NaN, silently
        r = stats.rates_from_confusion(3, 0, 0, 0)
    assert r["accuracy"] == 1.0 and r["specificity"] == 1.0 and np.isnan(r["sensitivity"])
    for v in r.values():
        assert v.dtype == np.float64
    # counts of a small integer type: no wrap-around (300 cases in uint8), float64 out
    u8 = stats.rates_from_confusion(*(np.array([v], np.uint8) for v in (200, 100, 0, 100)))
    assert u8["accuracy"].tolist() == [0.75] and u8["specificity"].dtype == np.float64
    f32 = stats.rates_from_confusion(*(np.array([v], np.float32) for v in (1, 2, 3, 4)))
    assert all(v.dtype == np.float64 for v in f32.values()) and f32["sensitivity"].tolist() == [4 / 7]


def test_check_binary_lists_at_most_five_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, found \[-1, 2, 3, 4, 5\]$"):
        stats.roc_auc(np.linspace(0, 1, 9), [0, 1, 7, 6, 5, 4, 3, 2, -1])
    with pytest.raises(ValueError, match="^scores contain NaN or inf$"):
        stats.confusion_at([0.1, np.inf], [0, 1], 0.5)
    with pytest.raises(ValueError, match=r"ROC needs both classes, got 0 positive and 2 negative case\(s\)"):
        stats.roc_auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"AUROC needs both classes, got 3 positive and 0 negative case\(s\)"):
        stats.auroc_bootstrap([0.1, 0.2, 0.3], [1, 1, 1], np.zeros((1, 3), int))
    s, y = np.array([[0.2, 0.9], [0.4, 0.7]]), np.array([[0, 1], [0, 1]])  # any shape, flattened
    assert stats.roc_auc(s, y) == 1.0 and stats.youden_threshold(s, y) == (0.7, 1.0)


def test_bootstrap_indices_follow_the_documented_seeded_draws():
    """``default_rng(seed).integers`` over cases; stratified: all positive draws, then all negative draws."""
    with pytest.raises(ValueError, match=r"^bootstrap needs at least one case$"):
        stats.bootstrap_indices(-1, 3, seed=0)
    np.testing.assert_array_equal(stats.bootstrap_indices(7, 30, seed=1),
                                  np.random.default_rng(1).integers(0, 7, size=(30, 7)))
    y = np.array([1, 0, 0, 1, 0])
    rng = np.random.default_rng(5)
    ref = np.c_[np.array([0, 3])[rng.integers(0, 2, (20, 2))], np.array([1, 2, 4])[rng.integers(0, 3, (20, 3))]]
    np.testing.assert_array_equal(stats.stratified_bootstrap_indices(y, 20, seed=5), ref)
    for labels, pool in (([1, 1, 1], [0, 1, 2]), ([0, 0], [0, 1])):  # one class: the draws of that class only
        idx = stats.stratified_bootstrap_indices(labels, 4, seed=2)
        ref = np.array(pool)[np.random.default_rng(2).integers(0, len(pool), (4, len(pool)))]
        assert idx.dtype.kind == "i"
        np.testing.assert_array_equal(idx, ref)


def test_defaults_calibration_and_percentiles():
    rng = np.random.default_rng(3)
    s = np.r_[0.0, 1.0, rng.uniform(0, 1, 40)]  # both ends of [0, 1] are probabilities
    y = np.r_[0, 1, rng.integers(0, 2, 40)]
    cal = stats.calibration_bins(s, y)
    assert cal["edges"].size == 11 and cal["count"].sum() == 42 and cal["count"][0] >= 1 and cal["count"][-1] >= 1
    with pytest.raises(ValueError, match=r"^calibration needs probabilities in \[0, 1\]$"):
        stats.calibration_bins([-0.01, 0.5], [0, 1])
    samples = rng.normal(size=(200, 3))
    lo, hi = stats.percentile_ci(samples)
    np.testing.assert_allclose(np.c_[lo, hi].T, np.percentile(samples, [2.5, 97.5], axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-NaN column is NaN, silently
        lo, hi = stats.percentile_ci(np.array([[1.0, np.nan], [2.0, np.nan]]), level=0.5, axis=0)
    np.testing.assert_array_equal(lo, [1.25, np.nan])
    lo, hi = stats.percentile_ci(samples.T, axis=1)  # along the rows
    np.testing.assert_allclose(lo, np.percentile(samples, 2.5, axis=0))


@pytest.mark.parametrize("n,seed", [(8, 0), (300, 2)])
def test_classification_statistics_against_sklearn_and_brute_force(n, seed):
    """The checks ``test_reports.py`` makes through ``classification_summary`` (400 resamples, ~0.7 s a case),
    on the stats functions directly with 30 resamples: the mutation run selects this instead of those cases."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * (2 * y - 1))))
    assert stats.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    idx = stats.stratified_bootstrap_indices(y, 30, seed=9)
    ref = [roc_auc_score(y[row], s[row]) for row in idx]
    np.testing.assert_allclose(stats.auroc_bootstrap(s, y, idx), ref, atol=1e-12)
    # Youden: every distinct score as a threshold, the highest one of the best J
    j_of = {t: np.mean(s[y == 1] >= t) + np.mean(s[y == 0] < t) - 1 for t in np.unique(s)}
    best_j = max(j_of.values())
    t, j = stats.youden_threshold(s, y)
    assert j == pytest.approx(best_j) and t == max(u for u, v in j_of.items() if v >= best_j - 1e-12)
    for thr in (0.5, t):
        (tn, fp), (fn, tp) = confusion_matrix(y, (s >= thr).astype(int), labels=[0, 1])
        counts = stats.confusion_at(s, y, thr)
        assert counts == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
        r = stats.rates_from_confusion(**counts)
        assert r["sensitivity"] == pytest.approx(tp / (tp + fn)) and r["specificity"] == pytest.approx(tn / (tn + fp))
        assert r["accuracy"] == pytest.approx((tp + tn) / n)
    # the vectorised rates over all resamples against a loop, and a 90 % interval against np.percentile
    pred = s[idx] >= 0.5
    truth = y[idx] == 1
    r = stats.rates_from_confusion((~pred & ~truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1),
                                   (pred & truth).sum(1))
    np.testing.assert_allclose(r["sensitivity"], [np.mean(s[row][y[row] == 1] >= 0.5) for row in idx])
    np.testing.assert_allclose(r["specificity"], [np.mean(s[row][y[row] == 0] < 0.5) for row in idx])
    lo, hi = stats.percentile_ci(np.array(ref), level=0.9)
    np.testing.assert_allclose([lo, hi], np.percentile(ref, [5, 95]))


def test_float32_scores_empty_bins_and_band_defaults():
    """Scores of any float type are computed in float64 (the Brier score against a float64 mean of squares to
    1e-13: float32 arithmetic is off by ~1e-8); empty calibration bins are NaN floats; the ROC band's default
    level is 95 % and its FPR grid is float64 even when given as integers."""
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 0.6, 50).astype(np.float32)  # nothing above 0.6: the last four bins are empty
    y = rng.integers(0, 2, 50)
    cal = stats.calibration_bins(s, y)
    assert cal["brier"] == pytest.approx(np.mean((y - s.astype(np.float64)) ** 2), rel=1e-13, abs=0)
    empty = cal["count"] == 0
    assert empty[-4:].all()
    for key in ("mean_predicted", "fraction_positive"):
        assert cal[key].dtype == np.float64 and np.isnan(cal[key][empty]).all() and not np.isnan(cal[key][~empty]).any()
    idx = stats.stratified_bootstrap_indices(y, 40, seed=1)
    band = stats.roc_band(s, y, idx)
    ref = stats.roc_band(s, y, idx, grid=np.linspace(0, 1, 101), level=0.95)
    for key in ("fpr", "tpr_low", "tpr_high"):
        np.testing.assert_array_equal(band[key], ref[key])
    ints = stats.roc_band(s, y, idx, grid=[0, 1])
    assert ints["fpr"].dtype == np.float64 and ints["fpr"].tolist() == [0.0, 1.0]
