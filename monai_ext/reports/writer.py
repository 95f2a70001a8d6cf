"""Write an evaluation folder from per-case records:

``metrics.json`` (sorted keys, floats rounded, seeded bootstrap, no timestamps: byte-identical for the
same predictions), ``per_case.csv`` (and ``validation_per_case.csv`` when a threshold was chosen on
validation predictions), figures (PNG), ``report.md``, ``report.html`` (self-contained),
``provenance.json`` and ``config.json`` (the resolved config, when known).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import figures as figs
from .provenance import data_origin_of
from .render import build_blocks, to_html, to_markdown
from .summary import MIN_CI_CASES, classification_summary, clean_for_json, segmentation_summary, sort_records

logger = logging.getLogger(__name__)

__all__ = ["column_name", "read_cases_csv", "write_cases_csv", "write_json", "write_report"]

METRICS_DIGITS = 6


def write_json(path: Path, obj: Any, digits: int | None = None) -> None:
    body = clean_for_json(obj, digits) if digits is not None else obj
    Path(path).write_text(json.dumps(body, sort_keys=True, indent=2, ensure_ascii=True, default=str) + "\n")


def column_name(name: str) -> str:
    """A class name as a CSV column suffix: ``left adrenal gland`` -> ``left_adrenal_gland``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_") or "class"


def _num(v: Any, digits: int = METRICS_DIGITS) -> str:
    if v is None:
        return ""
    f = float(v)
    return "nan" if math.isnan(f) else ("inf" if math.isinf(f) else f"{f:.{digits}f}")


def write_cases_csv(path: Path, records: Sequence[Mapping[str, Any]], task: str,
                    class_names: Sequence[str] | None = None,
                    thresholds: Mapping[str, float] | None = None) -> None:
    """One row per case, sorted by case id (fixed decimals, so the file is byte-stable too)."""
    recs = sort_records(records)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if task == "classification":
            ths = dict(thresholds or {})
            w.writerow(["case_id", "label", "probability", *(f"predicted_at_{k}" for k in ths)])
            for r in recs:
                p = float(r["probability"])
                w.writerow([r["case_id"], int(r["label"]), _num(p), *(int(p >= t) for t in ths.values())])
            return
        names = [column_name(n) for n in (class_names or [])]
        has_hd = all(r.get("hd95") is not None for r in recs)
        extra = [k for k in ("num_images", "num_leaves") if all(r.get(k) is not None for r in recs)]
        header = ["case_id", *extra, *(f"dice_{n}" for n in names)] + ([f"hd95_{n}" for n in names] if has_hd else [])
        w.writerow(header)
        for r in recs:
            row = [r["case_id"]]
            row += [int(r[k]) if k == "num_images" else _num(r[k], 3) for k in extra]
            row += [_num(v) for v in np.asarray(r["dice"], dtype=np.float64).reshape(-1)]
            if has_hd:
                row += [_num(v) for v in np.asarray(r["hd95"], dtype=np.float64).reshape(-1)]
            w.writerow(row)


def read_cases_csv(path: Path, task: str) -> tuple[list[dict[str, Any]], list[str] | None]:
    """Records (and, for segmentation, the class names) from a ``per_case.csv``-style file.

    Classification needs columns ``case_id, label, probability``; segmentation ``case_id`` and
    ``dice_<class>`` (optionally ``hd95_<class>``, ``num_images``, ``num_leaves``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: per-case file not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no cases (only a header or empty)")
    cols = list(rows[0].keys())
    if "case_id" not in cols:
        raise ValueError(f"{path}: needs a 'case_id' column, has {cols}")
    if task == "classification":
        missing = {"label", "probability"} - set(cols)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} (has {cols})")
        out = []
        for i, r in enumerate(rows):
            try:
                out.append({"case_id": r["case_id"], "label": int(float(r["label"])),
                            "probability": float(r["probability"])})
            except ValueError as e:
                raise ValueError(f"{path}: row {i + 2}: {e}") from None
        return out, None
    names = [c[len("dice_"):] for c in cols if c.startswith("dice_")]
    if not names:
        raise ValueError(f"{path}: no dice_<class> columns (has {cols})")
    has_hd = all(f"hd95_{n}" in cols for n in names)

    def fl(v: object) -> float:
        return float(v) if v not in ("", None) else float("nan")

    out = []
    for r in rows:
        rec: dict[str, Any] = {"case_id": r["case_id"], "dice": [fl(r[f"dice_{n}"]) for n in names],
                               "hd95": [fl(r[f"hd95_{n}"]) for n in names] if has_hd else None}
        if "num_images" in cols:
            rec["num_images"] = int(float(r["num_images"]))
        if "num_leaves" in cols:
            rec["num_leaves"] = fl(r["num_leaves"])
        out.append(rec)
    return out, names


def write_report(
    output_dir: str | Path,
    task: str,
    records: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    validation_records: Sequence[Mapping[str, Any]] | None = None,
    threshold: float | None = None,
    threshold_source: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    hd95_unit: str = "voxel",
    apf: Mapping[str, Any] | None = None,
    overlays: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    min_ci_cases: int = MIN_CI_CASES,
    saliency: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Summarise ``records`` and write the evaluation folder; returns the (rounded) metrics.

    No CI is given for a value resting on fewer than ``min_ci_cases`` cases. Whether the data are synthetic
    (:func:`monai_ext.reports.provenance.data_origin_of`: ``provenance["data_origin"]`` or what ``prepare``
    recorded in the datalist) is stated in ``metrics.json`` (``data_origin``) and the reports.

    ``overlays``: dicts with ``image`` ``(C, H, W)``, ``label`` / ``pred`` ``(H, W)`` class maps, ``title``
    and optionally ``caption``, ``leaves`` ``(L, 3)``, ``scale`` and ``class_names`` (all classes, background
    first; default: "background" + ``class_names``) (segmentation only).

    ``saliency``: multiclass only, :func:`~monai_ext.reports.multiclass.saliency_items`' dicts (the figure).
    """
    if task not in ("classification", "multiclass", "segmentation"):
        raise ValueError(f"task must be 'classification', 'multiclass' or 'segmentation', got {task!r}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"n_bootstrap": n_bootstrap, "seed": seed, "ci_level": ci_level, "min_ci_cases": min_ci_cases}
    figures: list[tuple[str, str]] = []
    if task == "classification":
        names = list(class_names) if class_names else ["negative", "positive"]
        metrics, curves = classification_summary(records, validation_records, threshold, threshold_source,
                                                 class_names=names, **kw)
        write_cases_csv(out / "per_case.csv", records, task, thresholds=curves["operating_points"])
        if validation_records is not None:
            write_cases_csv(out / "validation_per_case.csv", validation_records, task)
        if "band" in curves:
            figs.roc_figure(curves, metrics, out / "roc.png")
            figures.append(("roc.png", "ROC curve with the pointwise bootstrap band and the operating points"))
        figs.reliability_figure(curves, out / "reliability.png")
        figures.append(("reliability.png", "Reliability diagram and predicted probabilities by true class"))
    elif task == "multiclass":
        from .multiclass import multiclass_summary, saliency_figure, write_multiclass_csv

        recs = sort_records(records)
        metrics = multiclass_summary(recs, class_names)
        write_multiclass_csv(out / "per_case.csv", recs, metrics["class_names"])
        if saliency:
            saliency_figure(saliency, metrics["class_names"], out / "saliency.png")
            figures.append(("saliency.png", "Gradient saliency |d logit / d image| of the predicted class "
                                            "(MONAI VanillaGrad), first evaluated image(s) of each class"))
    else:
        if not class_names:
            n = len(np.asarray(records[0]["dice"]).reshape(-1)) if records else 0
            class_names = [f"class_{i + 1}" for i in range(n)]
        metrics, curves = segmentation_summary(records, class_names, hd95_unit=hd95_unit, apf=apf, **kw)
        write_cases_csv(out / "per_case.csv", records, task, class_names=class_names)
        figs.dice_boxplot(curves, out / "dice_boxplot.png")
        figures.append(("dice_boxplot.png", "Dice per class over the evaluated cases"))
        for i, ov in enumerate(overlays):
            name = f"overlay_{i + 1:02d}.png"
            figs.overlay_figure(ov["image"], ov["label"], ov["pred"], out / name, title=ov.get("title", ""),
                                class_names=ov.get("class_names") or ["background", *class_names],
                                leaves=ov.get("leaves"), scale=ov.get("scale", 1.0))
            figures.append((name, ov.get("caption") or ov.get("title") or name))
    origin = data_origin_of(provenance)
    # metrics.json stays byte-stable: no machine-specific paths in it
    metrics["data_origin"] = {k: origin[k] for k in ("synthetic", "dataset", "generator", "cases", "seed", "note")
                              if k in origin}
    metrics = clean_for_json(metrics, METRICS_DIGITS)
    write_json(out / "metrics.json", metrics)
    prov = {**dict(provenance), "data_origin": origin}
    if config is not None:
        write_json(out / "config.json", config)
    write_json(out / "provenance.json", prov)
    blocks = build_blocks(metrics, prov, figures)
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, out))
    logger.info("evaluation report written to %s", out)
    return metrics
