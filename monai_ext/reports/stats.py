"""Numbers for evaluation reports: ROC / AUROC, operating points, calibration, and seeded bootstrap
confidence intervals.

Conventions:

- scores are probabilities of the positive class, labels are 0 / 1; a case is called positive when
  ``score >= threshold``.
- scikit-learn does the single-sample statistics: :func:`roc_curve` is ``sklearn.metrics.roc_curve`` without
  ``drop_intermediate`` (one point per distinct score), :func:`roc_auc` is ``roc_auc_score`` (the trapezoidal
  area, i.e. the Mann-Whitney U statistic with ties counted 1/2), :func:`confusion_at` is
  ``confusion_matrix``, :func:`calibration_bins` uses ``calibration_curve`` (uniform bins; a probability on a
  bin edge falls into the lower bin, as in scikit-learn) and ``brier_score_loss``.
- written here, on purpose: the statistics of the bootstrap resamples (:func:`auroc_bootstrap`,
  :func:`rates_from_confusion`), vectorised over all resamples at once -- scikit-learn would take a Python
  loop of 1000 calls per statistic; the tests check them against scikit-learn on the same resamples.
- bootstrap: ``numpy.random.default_rng(seed)``; percentile intervals (2.5 / 97.5 percentiles for a 95% CI).
  Classification resamples positives and negatives separately (stratified, so every resample has both
  classes and AUROC is always defined -- pROC's default for ROC curves); segmentation resamples cases.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "auroc_bootstrap",
    "bootstrap_indices",
    "calibration_bins",
    "confusion_at",
    "percentile_ci",
    "rates_from_confusion",
    "roc_auc",
    "roc_band",
    "roc_curve",
    "stratified_bootstrap_indices",
    "youden_threshold",
]


def _check_binary(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    if not np.all(np.isin(y, (0, 1))):
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()
        raise ValueError(f"labels must be 0 or 1, found {bad}")
    return s, y.astype(np.int64)


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``; ``thresholds[0] = inf`` (nothing positive), then every
    distinct score in decreasing order. Needs both classes."""
    from sklearn.metrics import roc_curve as _roc_curve

    s, y = _check_binary(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both classes, got {n_pos} positive and {n_neg} negative case(s)")
    fpr, tpr, thr = _roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (trapezoidal, ties count 1/2): ``sklearn.metrics.roc_auc_score``."""
    from sklearn.metrics import roc_auc_score

    s, y = _check_binary(scores, labels)
    roc_curve(s, y)  # the same error as the curve when a class is missing
    return float(roc_auc_score(y, s))


def youden_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 over the ROC points, and J.
    Ties go to the highest threshold (the first maximum along the curve)."""
    fpr, tpr, thr = roc_curve(scores, labels)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1  # index 0 is the "nothing positive" point at +inf
    return float(thr[i]), float(j[i])


def confusion_at(scores: Any, labels: Any, threshold: float) -> dict[str, int]:
    """Confusion counts ``tn, fp, fn, tp`` when ``score >= threshold`` is called positive."""
    from sklearn.metrics import confusion_matrix

    s, y = _check_binary(scores, labels)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, (s >= threshold).astype(np.int64), labels=[0, 1]).ravel())
    return {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def rates_from_confusion(tn: Any, fp: Any, fn: Any, tp: Any) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity and specificity from confusion counts (scalars or arrays); NaN where the
    denominator is zero."""
    tn, fp, fn, tp = (np.asarray(v, dtype=np.float64) for v in (tn, fp, fn, tp))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
        }


def calibration_bins(scores: Any, labels: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data over ``n_bins`` equal-width bins of the predicted probability
    (``sklearn.calibration.calibration_curve(strategy="uniform")``: bins ``[0, e1], (e1, e2], ...``).

    Returns ``edges`` ``(n_bins + 1,)``, per bin ``count``, ``mean_predicted`` and
    ``fraction_positive`` (NaN for empty bins), the expected calibration error
    ``ece = sum_b n_b / n * |fraction_positive_b - mean_predicted_b|`` and the Brier score
    (``sklearn.metrics.brier_score_loss``).
    """
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    s, y = _check_binary(scores, labels)
    if np.any((s < 0) | (s > 1)):
        raise ValueError("calibration needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # calibration_curve returns the filled bins only; their counts come from the same binning
    count = np.bincount(np.searchsorted(edges[1:-1], s), minlength=n_bins)
    filled = count > 0
    mean_pred = np.full(n_bins, np.nan)
    frac_pos = np.full(n_bins, np.nan)
    frac_pos[filled], mean_pred[filled] = calibration_curve(y, s, n_bins=n_bins, strategy="uniform", pos_label=1)
    ece = float(np.sum(count[filled] / s.size * np.abs(frac_pos[filled] - mean_pred[filled])))
    return {
        "edges": edges,
        "count": count,
        "mean_predicted": mean_pred,
        "fraction_positive": frac_pos,
        "ece": ece,
        "brier": float(brier_score_loss(y, s, pos_label=1)),
    }


def stratified_bootstrap_indices(labels: Any, n_samples: int, seed: int) -> np.ndarray:
    """``(n_samples, n)`` case indices: each row draws ``n_pos`` positives and ``n_neg`` negatives with
    replacement (positives first)."""
    y = np.asarray(labels).reshape(-1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    ip = pos[rng.integers(0, pos.size, size=(n_samples, pos.size))] if pos.size else np.empty((n_samples, 0), int)
    ineg = neg[rng.integers(0, neg.size, size=(n_samples, neg.size))] if neg.size else np.empty((n_samples, 0), int)
    return np.concatenate([ip, ineg], axis=1)


def bootstrap_indices(n: int, n_samples: int, seed: int) -> np.ndarray:
    """``(n_samples, n)`` case indices drawn with replacement."""
    if n <= 0:
        raise ValueError("bootstrap needs at least one case")
    return np.random.default_rng(seed).integers(0, n, size=(n_samples, n))


def _rankdata_rows(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties averaged) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def auroc_bootstrap(scores: Any, labels: Any, indices: np.ndarray) -> np.ndarray:
    """AUROC of every row of stratified bootstrap ``indices`` (positives first in each row, as from
    :func:`stratified_bootstrap_indices`), through the rank-sum (Mann-Whitney) formula."""
    s, y = _check_binary(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes, got {n_pos} positive and {n_neg} negative case(s)")
    ranks = _rankdata_rows(s[indices])
    rank_sum = ranks[:, :n_pos].sum(axis=1)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(scores: Any, labels: Any) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score`` (step-wise, no
    interpolation); its chance level is the prevalence of positives."""
    from sklearn.metrics import average_precision_score

    s, y = _check_binary(scores, labels)
    return float(average_precision_score(y, s))


def average_precision_bootstrap(scores: Any, labels: Any, indices: np.ndarray) -> np.ndarray:
    """:func:`average_precision` of every row of bootstrap ``indices`` ``(n_samples, n)`` -> ``(n_samples,)``."""
    from sklearn.metrics import average_precision_score

    s, y = _check_binary(scores, labels)
    return np.array([average_precision_score(y[row], s[row]) for row in indices], dtype=np.float64)


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``samples`` along ``axis`` (NaN samples ignored)."""
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as wanted
        lo = np.nanpercentile(samples, 100 * alpha, axis=axis)
        hi = np.nanpercentile(samples, 100 * (1 - alpha), axis=axis)
    return lo, hi


def roc_band(scores: Any, labels: Any, indices: np.ndarray, grid: Sequence[float] | None = None,
             level: float = 0.95) -> dict[str, np.ndarray]:
    """Pointwise percentile band of the true-positive rate over bootstrap ROC curves (vertical
    averaging on a false-positive-rate ``grid``, default 0..1 in 101 steps)."""
    s, y = _check_binary(scores, labels)
    fpr_grid = np.linspace(0, 1, 101) if grid is None else np.asarray(grid, dtype=np.float64)
    curves = np.empty((indices.shape[0], fpr_grid.size))
    for b, row in enumerate(indices):
        fpr, tpr, _ = roc_curve(s[row], y[row])
        # the curve is a step function; the largest tpr reached at each fpr
        curves[b] = np.interp(fpr_grid, fpr, tpr)
    lo, hi = percentile_ci(curves, level, axis=0)
    return {"fpr": fpr_grid, "tpr_low": lo, "tpr_high": hi}
