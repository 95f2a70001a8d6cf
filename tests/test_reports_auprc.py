"""AUPRC (average precision) in classification reports: scikit-learn's value, a bootstrap CI equal to a plain loop
over the same resamples, the prevalence as its chance level, and the line in report.md."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.reports import stats
from monai_ext.reports.render import _classification_blocks
from monai_ext.reports.summary import classification_summary


def _imbalanced_records(n: int, seed: int, prevalence: float) -> list[dict]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2.0 * y - 1.0)))
    return [{"case_id": f"c{i:04d}", "label": int(a), "probability": float(b)} for i, (a, b) in enumerate(zip(y, s))]


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_auprc_equals_sklearn_and_plain_bootstrap(level):
    from sklearn.metrics import average_precision_score, roc_auc_score

    recs = _imbalanced_records(400, 5, 0.05)
    y = np.array([r["label"] for r in recs])
    s = np.array([r["probability"] for r in recs])
    m, _ = classification_summary(recs, n_bootstrap=150, seed=2, ci_level=level)
    ap = m["auprc"]
    assert ap["value"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert ap["prevalence"] == pytest.approx(y.mean())
    # the same stratified resamples as the AUROC's: a plain loop over scikit-learn
    idx = stats.stratified_bootstrap_indices(y, 150, 2)
    vals = [average_precision_score(y[r], s[r]) for r in idx]
    alpha = (1 - level) / 2
    lo, hi = np.percentile(vals, 100 * alpha), np.percentile(vals, 100 * (1 - alpha))
    assert (ap["ci_low"], ap["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    # under imbalance the two metrics tell different stories: AUROC high, AUPRC far lower (but above chance)
    assert roc_auc_score(y, s) > 0.8 and y.mean() < ap["value"] < roc_auc_score(y, s) - 0.2
    text = str(_classification_blocks(m))
    assert f"AUPRC (average precision; prevalence {y.mean():.3f})" in text


def test_auprc_undefined_with_one_class():
    recs = [{"case_id": f"c{i}", "label": 0, "probability": i / 10} for i in range(10)]
    m, _ = classification_summary(recs, n_bootstrap=20)
    assert m["auprc"]["value"] is None and "undefined" in m["auprc"]["note"]
