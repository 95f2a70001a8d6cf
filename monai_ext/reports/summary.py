"""From per-case results to the ``metrics.json`` content (plus the arrays the figures need).

Per-case results are plain records so they can be gathered across DDP ranks and read back from
``per_case.csv``:

- classification: ``case_id``, ``label`` (0 / 1), ``probability`` (of the positive class);
- segmentation: ``case_id``, ``dice`` and ``hd95`` (one value per foreground class, NaN where MONAI
  gives NaN), optional ``num_images`` (2D images: slices of a volume) and ``num_leaves`` (APF: mean
  real quadtree leaves per image).

Records are sorted by case id before any bootstrap, so the numbers do not depend on the order in
which cases were evaluated (batch size, number of DDP ranks).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import stats

__all__ = ["MIN_CI_CASES", "classification_summary", "clean_for_json", "segmentation_summary", "sort_records"]

#: fewest cases a bootstrap confidence interval is reported for; below it the value comes without a CI
#: and a ``ci_note`` says why (a percentile bootstrap of 2 cases gives a meaningless "95% CI")
MIN_CI_CASES = 10


def sort_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records in a canonical order: by case id, then by their values (for duplicate ids)."""
    return sorted((dict(r) for r in records), key=lambda r: (str(r["case_id"]), repr(sorted(r.items()))))


def _interval(value: float | None, samples: np.ndarray | None, level: float, n: int | None = None,
              min_n: int = 0) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high"}``; without CI (and a ``ci_note`` saying why) when the statistic
    rests on ``n < min_n`` cases."""
    if value is not None and n is not None and n < min_n:
        return {"value": float(value), "ci_low": None, "ci_high": None, "ci_note": f"n={n} < {min_n}: no CI"}
    if value is None or samples is None:
        return {"value": value, "ci_low": None, "ci_high": None}
    lo, hi = stats.percentile_ci(np.asarray(samples, dtype=np.float64), level)
    return {"value": float(value), "ci_low": float(lo), "ci_high": float(hi)}


def _operating_point(s: np.ndarray, y: np.ndarray, threshold: float, idx: np.ndarray, level: float,
                     min_n: int = 0) -> dict[str, Any]:
    cm = stats.confusion_at(s, y, threshold)
    point = stats.rates_from_confusion(**cm)
    # bootstrap: confusion counts of every resample at the same threshold
    pred = s[idx] >= threshold
    yy = y[idx] == 1
    boot = stats.rates_from_confusion(
        tn=np.sum(~pred & ~yy, axis=1), fp=np.sum(pred & ~yy, axis=1),
        fn=np.sum(~pred & yy, axis=1), tp=np.sum(pred & yy, axis=1))
    out: dict[str, Any] = {"threshold": float(threshold)}
    counts = {"accuracy": int(y.size), "sensitivity": int(np.sum(y == 1)), "specificity": int(np.sum(y == 0))}
    for name in ("accuracy", "sensitivity", "specificity"):
        v = float(point[name])
        out[name] = _interval(None if math.isnan(v) else v, boot[name], level, counts[name], min_n)
    out["confusion_matrix"] = {
        **cm,
        "matrix": [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]],
        "rows": "true class (negative, positive)",
        "columns": "predicted class (negative, positive)",
    }
    return out


def classification_summary(
    records: Sequence[Mapping[str, Any]],
    validation_records: Sequence[Mapping[str, Any]] | None = None,
    threshold: float | None = None,
    threshold_source: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    class_names: Sequence[str] = ("negative", "positive"),
    n_calibration_bins: int = 10,
    min_ci_cases: int = MIN_CI_CASES,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Binary classification metrics of the test ``records`` (see the module docstring).

    AUROC and AUPRC (average precision; chance = prevalence) with stratified percentile bootstrap CIs (no CI
    below ``min_ci_cases`` cases: accuracy and AUROC
    count all cases, sensitivity the positives, specificity the negatives); Brier score, expected calibration error;
    accuracy, sensitivity, specificity (with CIs) and the confusion matrix at 0.5 and at a second
    threshold: Youden's J maximised on ``validation_records`` if given, else ``threshold`` (e.g. from a
    file, described by ``threshold_source``); with neither, only 0.5 is reported.

    Returns ``(metrics, curves)``: the JSON-ready metrics and the arrays the figures need.
    """
    if not records:
        raise ValueError("no test cases to summarise (is the evaluation split empty?)")
    if validation_records is not None and threshold is not None:
        raise ValueError("give either validation_records (Youden threshold chosen on them) or threshold, not both")
    recs = sort_records(records)
    s = np.array([float(r["probability"]) for r in recs])
    y = np.array([int(r["label"]) for r in recs])
    s, y = stats._check_binary(s, y)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    both = n_pos > 0 and n_neg > 0
    idx = (stats.stratified_bootstrap_indices(y, n_bootstrap, seed) if both
           else stats.bootstrap_indices(y.size, n_bootstrap, seed))
    metrics: dict[str, Any] = {
        "task": "classification",
        "class_names": list(class_names),
        "n_cases": int(y.size),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "bootstrap": {
            "n_samples": int(n_bootstrap),
            "seed": int(seed),
            "ci_level": float(ci_level),
            "method": "percentile; positives and negatives resampled separately" if both
            else "percentile; cases resampled",
            "min_cases": int(min_ci_cases),
        },
    }
    if y.size < min_ci_cases:
        metrics["bootstrap"]["note"] = f"n={y.size} < {min_ci_cases}: no CI"
    curves: dict[str, Any] = {"scores": s, "labels": y, "class_names": list(class_names)}
    if both:
        auc = stats.roc_auc(s, y)
        metrics["auroc"] = _interval(auc, stats.auroc_bootstrap(s, y, idx), ci_level, int(y.size), min_ci_cases)
        # AUPRC (average precision): informative under class imbalance, where AUROC looks good at low precision
        ap = _interval(stats.average_precision(s, y), stats.average_precision_bootstrap(s, y, idx), ci_level,
                       int(y.size), min_ci_cases)
        metrics["auprc"] = {**ap, "prevalence": n_pos / y.size, "method": "sklearn average_precision_score"}
        fpr, tpr, _ = stats.roc_curve(s, y)
        curves.update(fpr=fpr, tpr=tpr, band=stats.roc_band(s, y, idx, level=ci_level))
    else:
        metrics["auroc"] = {"value": None, "ci_low": None, "ci_high": None,
                            "note": f"undefined: the test split has {n_pos} positive and {n_neg} negative case(s)"}
        metrics["auprc"] = {"value": None, "ci_low": None, "ci_high": None, "note": metrics["auroc"]["note"]}
    cal = stats.calibration_bins(s, y, n_calibration_bins)
    metrics["calibration"] = {"brier": cal["brier"], "ece": cal["ece"], "n_bins": int(n_calibration_bins)}
    curves["calibration"] = cal

    points: dict[str, Any] = {"default": _operating_point(s, y, 0.5, idx, ci_level, min_ci_cases)}
    selection: dict[str, Any]
    if validation_records is not None:
        vrecs = sort_records(validation_records)
        vs = np.array([float(r["probability"]) for r in vrecs])
        vy = np.array([int(r["label"]) for r in vrecs])
        vs, vy = stats._check_binary(vs, vy)
        vpos = int(vy.sum())
        selection = {"method": "youden", "split": "validation", "n_cases": int(vy.size), "n_positive": vpos}
        if 0 < vpos < vy.size:
            t, j = stats.youden_threshold(vs, vy)
            selection.update(threshold=t, youden_j=j)
            points["youden"] = _operating_point(s, y, t, idx, ci_level, min_ci_cases)
        else:
            selection["note"] = f"undefined: the validation split has {vpos} positive of {vy.size} case(s)"
    elif threshold is not None:
        selection = {"method": "given", "source": threshold_source or "argument", "threshold": float(threshold)}
        points["youden"] = _operating_point(s, y, float(threshold), idx, ci_level, min_ci_cases)
    else:
        selection = {"method": "none", "note": "no validation predictions or threshold given"}
    metrics["threshold_selection"] = selection
    metrics["operating_points"] = points
    curves["operating_points"] = {k: v["threshold"] for k, v in points.items()}
    return metrics, curves


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def monai_mean(values: np.ndarray) -> np.ndarray:
    """MONAI's ``MetricReduction.MEAN`` on ``(..., n_cases, n_classes)``: the NaN-aware mean over classes
    per case, then over the cases that have a value (NaN where none has)."""
    per_case = _nanmean(values, axis=-1)
    return _nanmean(per_case, axis=-1)


def segmentation_summary(
    records: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    hd95_unit: str = "voxel",
    apf: Mapping[str, Any] | None = None,
    min_ci_cases: int = MIN_CI_CASES,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Segmentation metrics of per-case Dice / HD95 ``records`` over the foreground ``class_names``.

    No CI for a value resting on fewer than ``min_ci_cases`` cases (its ``ci_note`` says so).

    Per class: the mean over the cases where it is defined (MONAI: NaN when the ground truth lacks the
    class) with a bootstrap CI over cases. ``mean_dice`` is MONAI's ``MetricReduction.MEAN`` (what the
    ``MeanDice`` handler / ``DiceMetric().aggregate()`` report); ``mean_dice_over_classes`` is the mean
    of the per-class values. HD95 is NaN (and left out of the means, as in MONAI) when the ground truth
    has the class but the prediction does not; those cases are counted in ``hd95_undefined``.
    """
    if not records:
        raise ValueError("no test cases to summarise (is the evaluation split empty?)")
    recs = sort_records(records)
    names = list(class_names)
    dice = np.array([np.asarray(r["dice"], dtype=np.float64).reshape(-1) for r in recs])
    if dice.shape[1] != len(names):
        raise ValueError(f"{dice.shape[1]} Dice values per case but {len(names)} class names {names}")
    has_hd = all(r.get("hd95") is not None for r in recs)
    hd = np.array([np.asarray(r["hd95"], dtype=np.float64).reshape(-1) for r in recs]) if has_hd else None
    idx = stats.bootstrap_indices(len(recs), n_bootstrap, seed)
    metrics: dict[str, Any] = {
        "task": "segmentation",
        "class_names": names,
        "n_cases": len(recs),
        "bootstrap": {"n_samples": int(n_bootstrap), "seed": int(seed), "ci_level": float(ci_level),
                      "method": "percentile; cases resampled", "min_cases": int(min_ci_cases)},
    }
    if len(recs) < min_ci_cases:
        metrics["bootstrap"]["note"] = f"n={len(recs)} < {min_ci_cases}: no CI"

    def block(values: np.ndarray) -> dict[str, Any]:
        boot = values[idx]  # (B, n, C)
        per_class_point = _nanmean(values, axis=0)
        per_class_boot = _nanmean(boot, axis=1)
        per_class = {}
        for c, name in enumerate(names):
            n_def = int(np.sum(~np.isnan(values[:, c])))
            v = None if n_def == 0 else float(per_class_point[c])
            per_class[name] = {**_interval(v, per_class_boot[:, c] if v is not None else None, ci_level, n_def,
                                           min_ci_cases), "n_cases": n_def}
        n_any = int(np.sum(np.any(~np.isnan(values), axis=1)))  # cases that enter the MONAI mean
        mean = monai_mean(values)
        mean_iv = _interval(None if np.isnan(mean) else float(mean), monai_mean(boot), ci_level, n_any, min_ci_cases)
        macro = _nanmean(per_class_point, axis=0)
        macro_iv = _interval(None if np.isnan(macro) else float(macro), _nanmean(per_class_boot, axis=1), ci_level,
                             n_any, min_ci_cases)
        return {"per_class": per_class, "mean": mean_iv, "mean_over_classes": macro_iv}

    metrics["dice"] = block(dice)
    if hd is not None:
        metrics["hd95"] = {**block(hd), "unit": hd95_unit,
                           "hd95_undefined": {n: int(np.sum(~np.isnan(dice[:, c]) & np.isnan(hd[:, c])))
                                              for c, n in enumerate(names)}}
    n_images = [r.get("num_images") for r in recs]
    if all(v is not None for v in n_images):
        metrics["n_images"] = int(sum(int(v) for v in n_images))
    if apf is not None:
        leaves = [r.get("num_leaves") for r in recs]
        info = {k: apf[k] for k in ("mode", "num_tokens", "patch_size") if k in apf}
        if all(v is not None for v in leaves) and metrics.get("n_images"):
            w = np.array([int(r["num_images"]) for r in recs], dtype=np.float64)
            info["mean_leaves_per_image"] = float(np.sum(np.array(leaves, dtype=np.float64) * w) / w.sum())
        metrics["apf"] = info
    curves = {"dice": dice, "hd95": hd, "class_names": names, "case_ids": [str(r["case_id"]) for r in recs]}
    return metrics, curves


def clean_for_json(obj: Any, digits: int = 6) -> Any:
    """Plain JSON types with floats rounded to ``digits`` decimals and NaN / inf as ``null``, so the
    file is byte-stable (write with ``sort_keys=True``)."""
    if isinstance(obj, Mapping):
        return {str(k): clean_for_json(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_for_json(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_for_json(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            return None
        r = round(f, digits)
        return 0.0 if r == 0 else r  # no "-0.0"
    return obj
