"""One table across evaluation folders (``monai-ext report compare DIR ...``).

- Classification folders give the softmax-free paper's Table 2 layout: one row per dataset (run name,
  plus the image size when the variant records one), one column per attention type (ViT = softmax,
  SimA, softmax-free), AUROC with its bootstrap CI in each cell.
- Segmentation folders give the APF paper's Table II layout: one row per run with the model (APF-UNETR,
  or UNETR for uniform patching), patch size, tokens (sequence length and mean real leaves per image),
  seconds per image of the evaluation and mean Dice with its CI.

The attention type, APF settings and run name come from ``provenance.json`` (``run.variant`` /
``run.apf``, written by :class:`~monai_ext.reports.EvaluationReport`), falling back to literal values in
the saved ``config.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .render import fmt_interval

logger = logging.getLogger(__name__)

__all__ = ["ATTENTION_LABELS", "compare_table", "load_run"]

#: column order and headers of the classification table
ATTENTION_LABELS = {"softmax": "ViT (softmax)", "sima": "SimA", "softmax_free": "softmax-free (ours)"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _literal(config: Mapping[str, Any] | None, *keys: str) -> Any:
    node: Any = config
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    if isinstance(node, str) and node.startswith(("$", "@", "%")):
        return None  # an expression or reference: its value is not in the raw config
    return node


def load_run(folder: str | Path) -> dict[str, Any]:
    """Metrics, provenance and the identifying settings of one evaluation folder."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a folder")
    mpath = d / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{d}: no metrics.json (not an evaluation folder written by EvaluationReport)")
    metrics = _read_json(mpath)
    prov = _read_json(d / "provenance.json") if (d / "provenance.json").is_file() else {}
    config = _read_json(d / "config.json") if (d / "config.json").is_file() else None
    run = prov.get("run", {}) or {}
    variant = dict(run.get("variant") or {})
    if "attention" not in variant:
        att = _literal(config, "network_def", "attention")
        if att is not None:
            variant["attention"] = att
    apf = dict(metrics.get("apf") or run.get("apf") or {})
    if not apf and config is not None:
        for k in ("mode", "num_tokens", "patch_size"):
            v = _literal(config, "apf", k)
            if v is not None:
                apf[k] = v
    cost = _read_json(d / "training_cost.json") if (d / "training_cost.json").is_file() else None
    return {"dir": str(d), "name": run.get("name") or d.name, "task": metrics.get("task"), "metrics": metrics,
            "provenance": prov, "variant": variant, "apf": apf, "cost": cost}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _dataset_label(r: Mapping[str, Any]) -> str:
    """Run name plus its image size when the variant records one (results differ by resolution)."""
    size = r["variant"].get("image_size")
    if size is None:
        return r["name"]
    return f"{r['name']} ({'x'.join(str(v) for v in size)})" if isinstance(size, list) else f"{r['name']} ({size} px)"


def _classification_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = [a for a in ATTENTION_LABELS if any(r["variant"].get("attention") == a for r in runs)]
    columns += sorted({str(r["variant"].get("attention", "n/a")) for r in runs} - set(columns))
    table: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        row = _dataset_label(r)
        cell = fmt_interval(r["metrics"].get("auroc"))
        table.setdefault(row, {}).setdefault(str(r["variant"].get("attention", "n/a")), []).append(cell)
    lines = ["| Dataset | " + " | ".join(ATTENTION_LABELS.get(c, c) for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in sorted(table):
        cells = ["; ".join(table[row].get(c, [])) or "-" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    level = {r["metrics"].get("bootstrap", {}).get("ci_level") for r in runs}
    lines += ["", (f"AUROC on the test split with its {', '.join(f'{100 * v:.0f}%' for v in sorted(level) if v)} "
                   "bootstrap CI.")]
    return lines


def _multiclass_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| Dataset | Attention | Top-1 | Top-5 | Balanced accuracy (chance) | Macro AUROC | Cases |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (_dataset_label(r), str(r["variant"].get("attention", "n/a")))):
        m = r["metrics"]
        top_k = m.get(f"top{m.get('top_k', 5)}")
        lines.append("| " + " | ".join([
            _dataset_label(r), ATTENTION_LABELS.get(str(r["variant"].get("attention")),
                                                    str(r["variant"].get("attention", "n/a"))),
            _fmt(m.get("top1")), _fmt(top_k), f"{_fmt(m.get('balanced_accuracy'))} ({_fmt(m.get('chance'))})",
            _fmt(m.get("macro_auroc")), _fmt(m.get("n_cases"))]) + " |")
    lines += ["", "Top-k accuracy, balanced accuracy (mean recall over classes) and macro one-vs-rest AUROC on the "
                  "evaluated split (no CIs)."]
    return lines


def _segmentation_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [("| Dataset | Model | Attention | Patch | Tokens | Mean leaves / image | s / image | s / case | "
              "Mean Dice (CI) | Cases |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (_dataset_label(r), r["apf"].get("mode") == "uniform", r["dir"])):
        apf = r["apf"]
        model = "UNETR (uniform patches)" if apf.get("mode") == "uniform" else ("APF-UNETR" if apf else "n/a")
        timing = r["provenance"].get("timing", {})
        m = r["metrics"]
        lines.append("| " + " | ".join([
            _dataset_label(r), model, str(r["variant"].get("attention", "n/a")), _fmt(apf.get("patch_size")),
            _fmt(apf.get("num_tokens")), _fmt(apf.get("mean_leaves_per_image"), 1),
            _fmt(timing.get("seconds_per_image"), 4), _fmt(timing.get("seconds_per_case"), 3),
            fmt_interval(m.get("dice", {}).get("mean")), _fmt(m.get("n_cases"))]) + " |")
    lines += ["", ("Tokens: sequence length L of the transformer; mean leaves: real (unpadded) quadtree leaves. "
                   "Seconds: evaluation wall time (network, APF planning and unpatching, metrics) divided by the "
                   "number of 2D images / cases, on the device in each folder's provenance.json.")]
    return lines


def compare_table(folders: Sequence[str | Path]) -> str:
    """Markdown comparing the evaluation ``folders`` (classification and / or segmentation)."""
    if not folders:
        raise ValueError("give at least one evaluation folder")
    runs = [load_run(f) for f in folders]
    out = ["# Evaluation comparison", ""]
    cls = [r for r in runs if r["task"] == "classification"]
    seg = [r for r in runs if r["task"] == "segmentation"]
    multi = [r for r in runs if r["task"] == "multiclass"]
    other = [r["dir"] for r in runs if r["task"] not in ("classification", "segmentation", "multiclass")]
    if other:
        raise ValueError(f"unknown task in metrics.json of {other} (expected classification, multiclass or "
                         "segmentation)")
    if cls:
        out += ["## Classification: AUROC by attention type", "", *_classification_table(cls), ""]
    if multi:
        out += ["## Multi-class classification by attention type", "", *_multiclass_table(multi), ""]
    if seg:
        out += ["## Segmentation: APF vs uniform patching", "", *_segmentation_table(seg), ""]
    costs = [r for r in runs if r.get("cost")]
    if costs:
        out += ["## Training cost", "", "| Run | Variant | Epochs | s / epoch | Peak RSS (MiB) |",
                "|---|---|---|---|---|"]
        for r in costs:
            c = r["cost"]
            out.append(f"| {_dataset_label(r)} | {c.get('variant', 'n/a')} | {_fmt(c.get('epochs'))} | "
                       f"{_fmt(c.get('seconds_per_epoch'), 2)} | {_fmt(c.get('peak_rss_mib'), 0)} |")
        out += ["", ("s / epoch: the training command's wall time (start-up, data caching and validation after every "
                     "epoch included) divided by its epochs; peak RSS: the training process's maximum resident set "
                     "size, VmHWM (training_cost.json, written by `monai-ext paper-table`)."), ""]
    out += ["## Runs", "", "| Folder | Task | Name | Variant | Cases | Code | Checkpoint SHA-256 |",
            "|---|---|---|---|---|---|---|"]
    for r in runs:
        prov = r["provenance"]
        git = prov.get("git", {})
        ck = (prov.get("files", {}) or {}).get("checkpoint") or {}
        code = (git.get("commit") or "n/a")[:12] + (" (dirty)" if git.get("dirty") else "")
        variant = ", ".join(f"{k}={v}" for k, v in sorted(r["variant"].items())) or "-"
        out.append(f"| {r['dir']} | {r['task']} | {r['name']} | {variant} | {r['metrics'].get('n_cases')} | {code} | "
                   f"{(ck.get('sha256') or 'n/a')[:16]} |")
    return "\n".join(out) + "\n"
