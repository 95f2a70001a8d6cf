"""``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG) from one list of
blocks, so both always say the same thing."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Block", "build_blocks", "fmt_interval", "to_html", "to_markdown"]

#: ("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", file name, caption) | ("code", text)
Block = tuple


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_interval(iv: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``0.812 (0.702-0.905)``; ``0.812 (n=2 < 10: no CI)`` when too few cases; ``n/a`` when undefined."""
    if not iv or iv.get("value") is None:
        return "n/a"
    if iv.get("ci_low") is None:
        return _f(iv["value"], digits) + (f" ({iv['ci_note']})" if iv.get("ci_note") else "")
    return f"{_f(iv['value'], digits)} ({_f(iv['ci_low'], digits)}-{_f(iv['ci_high'], digits)})"


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "n/a"


def origin_text(origin: Mapping[str, Any] | None) -> str:
    """One sentence on where the evaluated data come from (``metrics.json``'s ``data_origin``)."""
    origin = origin or {}
    if origin.get("synthetic") is True:
        what = ", ".join(f"{k} {origin[k]}" for k in ("dataset", "cases", "seed") if origin.get(k) is not None)
        return (f"Data: SYNTHETIC ({what}; written by {origin.get('generator', 'monai-ext synth')}), not patient "
                f"data: these numbers say nothing about performance on real images.")
    if origin.get("synthetic") is False:
        return "Data: no synthetic-data marker in the raw folder the datalist was prepared from (real data)."
    return f"Data: origin unknown ({origin.get('note', 'not recorded')})."


def _run_blocks(metrics: Mapping[str, Any], prov: Mapping[str, Any]) -> list[Block]:
    run = prov.get("run", {})
    variant = run.get("variant") or {}
    files = prov.get("files", {})
    ckpt = files.get("checkpoint") or {}
    git = prov.get("git", {})
    lines = [
        f"Task: {metrics['task']}; split: {run.get('split', 'test')}; cases: {metrics['n_cases']}.",
    ]
    if variant:
        lines.append("Variant: " + ", ".join(f"{k} = {v}" for k, v in sorted(variant.items())) + ".")
    lines.append(f"Checkpoint: {ckpt.get('path', 'n/a')} (SHA-256 {_short(ckpt.get('sha256'))}); "
                 f"code: {_short(git.get('commit'))}{' (dirty)' if git.get('dirty') else ''}.")
    return [("p", origin_text(metrics.get("data_origin"))), ("p", " ".join(lines))]


def _classification_blocks(m: Mapping[str, Any], split: str = "test") -> list[Block]:
    level = round(100 * m["bootstrap"]["ci_level"])
    names = m.get("class_names", ["negative", "positive"])
    out: list[Block] = [
        ("h2", "Discrimination and calibration"),
        ("table", ["metric", f"value ({level}% CI)"], [
            ["AUROC", fmt_interval(m["auroc"])],
            *([[f"AUPRC (average precision; prevalence {_f(m['auprc']['prevalence'])})", fmt_interval(m["auprc"])]]
              if m.get("auprc", {}).get("prevalence") is not None else []),
            ["Brier score", _f(m["calibration"]["brier"])],
            [f"expected calibration error ({m['calibration']['n_bins']} bins)", _f(m["calibration"]["ece"])],
        ]),
        ("p", (f"Split '{split}': {m['n_cases']} cases, {m['n_positive']} '{names[1]}' and {m['n_negative']} "
              f"'{names[0]}'. CIs: {m['bootstrap']['n_samples']} bootstrap samples ({m['bootstrap']['method']}), "
              f"seed {m['bootstrap']['seed']}; no CI for a value from fewer than "
              f"{m['bootstrap'].get('min_cases', 0)} cases.")),
    ]
    if m["auroc"].get("note"):
        out.append(("p", f"AUROC {m['auroc']['note']}."))
    rows = []
    labels = {"default": "0.5 (default)", "youden": "Youden (validation)"}
    sel = m["threshold_selection"]
    if sel.get("method") == "given":
        labels["youden"] = f"given ({sel.get('source')})"
    for key, p in m["operating_points"].items():
        cm = p["confusion_matrix"]
        rows.append([labels.get(key, key), _f(p["threshold"], 4), fmt_interval(p["accuracy"]),
                     fmt_interval(p["sensitivity"]), fmt_interval(p["specificity"]),
                     f"{cm['tn']} / {cm['fp']} / {cm['fn']} / {cm['tp']}"])
    out += [("h2", "Operating points"),
            ("table", ["threshold", "value", "accuracy", "sensitivity", "specificity", "TN / FP / FN / TP"], rows)]
    if sel.get("method") == "youden":
        text = (f"The second threshold maximises Youden's J on the validation split ({sel['n_cases']} cases, "
                f"{sel['n_positive']} positive)")
        text += f": J = {_f(sel['youden_j'])}." if "youden_j" in sel else f"; {sel.get('note', '')}."
        out.append(("p", text))
    elif sel.get("note"):
        out.append(("p", f"Second threshold: {sel['note']}."))
    out.append(("p", "A case is called positive when its probability is >= the threshold."))
    return out


def _segmentation_blocks(m: Mapping[str, Any]) -> list[Block]:
    level = round(100 * m["bootstrap"]["ci_level"])
    hd = m.get("hd95")
    header = ["class", f"Dice ({level}% CI)", "cases"]
    if hd:
        header += [f"HD95 [{hd['unit']}] ({level}% CI)", "HD95 undefined"]
    rows = []
    for name in m["class_names"]:
        d = m["dice"]["per_class"][name]
        row = [name, fmt_interval(d), str(d["n_cases"])]
        if hd:
            row += [fmt_interval(hd["per_class"][name], 2), str(hd["hd95_undefined"][name])]
        rows.append(row)
    mean_row = ["mean (MONAI MeanDice)", fmt_interval(m["dice"]["mean"]), str(m["n_cases"])]
    macro_row = ["mean over classes", fmt_interval(m["dice"]["mean_over_classes"]), ""]
    if hd:
        mean_row += [fmt_interval(hd["mean"], 2), ""]
        macro_row += [fmt_interval(hd["mean_over_classes"], 2), ""]
    out: list[Block] = [
        ("h2", "Segmentation quality"),
        ("table", header, rows + [mean_row, macro_row]),
        ("p", (f"Per class: mean over the cases whose ground truth has the class; CIs: "
              f"{m['bootstrap']['n_samples']} bootstrap samples ({m['bootstrap']['method']}), seed "
              f"{m['bootstrap']['seed']}; no CI for a value from fewer than {m['bootstrap'].get('min_cases', 0)} "
              f"cases. HD95 is undefined (and left out, as in MONAI) when the prediction "
              f"misses a class present in the ground truth.")),
    ]
    if "apf" in m:
        a = m["apf"]
        out += [("h2", "Adaptive patching"),
                ("table", ["mode", "tokens (sequence length)", "patch size", "mean real leaves per image"],
                 [[str(a.get("mode", "n/a")), str(a.get("num_tokens", "n/a")), str(a.get("patch_size", "n/a")),
                   _f(a.get("mean_leaves_per_image"), 1)]])]
    return out


def _provenance_blocks(prov: Mapping[str, Any]) -> list[Block]:
    git = prov.get("git", {})
    files = prov.get("files", {})
    cfg = prov.get("config", {})
    timing = prov.get("timing", {})
    dev = prov.get("device", {})
    rows = [
        ["code", f"{git.get('commit') or 'n/a'}" + (" (dirty: uncommitted changes)" if git.get("dirty") else "")],
        ["config SHA-256", f"{cfg.get('sha256') or 'n/a'} ({cfg.get('source', '')})"],
    ]
    for key in ("checkpoint", "datalist"):
        rec = files.get(key)
        if rec:
            rows.append([f"{key} SHA-256", f"{rec.get('sha256', 'missing')}  {rec.get('path', '')}"])
    rows.append(["seeds", ", ".join(f"{k} {v}" for k, v in sorted((prov.get("seeds") or {}).items()))])
    rows.append(["device", (f"{dev.get('gpu') or dev.get('cpu', '')} ({dev.get('device', '')}), "
                           f"world size {prov.get('world_size', 1)}")])
    rows.append(["duration", ", ".join(f"{k[:-2].replace('_', ' ')} {_f(v, 2)} s" for k, v in timing.items()
                                       if k.endswith("_s"))])
    if timing.get("seconds_per_case") is not None:
        rows.append(["seconds per case", _f(timing["seconds_per_case"], 4)])
    pk = prov.get("packages", {})
    rows.append(["packages", ", ".join(f"{k} {v}" for k, v in pk.items())])
    out: list[Block] = [("h2", "Provenance"), ("table", ["item", "value"], rows)]
    if prov.get("command"):
        import shlex

        cmd = prov["command"]
        cmd = shlex.join(cmd) if isinstance(cmd, (list, tuple)) else str(cmd)
        where = f"the folder {Path(prov['cwd']).name}/" if prov.get("cwd") else "the bundle folder"
        out += [("p", f"Command (run in {where}; paths relative to it):"), ("code", cmd)]
    return out


def build_blocks(metrics: Mapping[str, Any], prov: Mapping[str, Any],
                 figures: Sequence[tuple[str, str]]) -> list[Block]:
    """The report's content. ``figures``: ``(file name, caption)`` pairs in the output folder."""
    name = prov.get("run", {}).get("name") or "evaluation"
    blocks: list[Block] = [("h1", f"Evaluation report: {name}")]
    blocks += _run_blocks(metrics, prov)
    split = prov.get("run", {}).get("split") or "test"
    if metrics["task"] == "multiclass":
        from .multiclass import multiclass_blocks

        blocks += multiclass_blocks(metrics, split)
    else:
        blocks += (_classification_blocks(metrics, split) if metrics["task"] == "classification"
                   else _segmentation_blocks(metrics))
    if figures:
        blocks.append(("h2", "Figures"))
        blocks += [("img", f, c) for f, c in figures]
    blocks += _provenance_blocks(prov)
    blocks.append(("p", "Files: metrics.json (deterministic), per_case.csv, provenance.json, config.json, figures."))
    return blocks


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "code":
            out.append(f"```\n{b[1]}\n```\n")
        elif kind == "table":
            header, rows = b[1], b[2]

            def cells(r: list) -> str:
                return "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"

            out.append("\n".join([cells(header), "|" + "---|" * len(header), *(cells(r) for r in rows)]) + "\n")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:6px}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0 12px}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left;
font-size:.92em;vertical-align:top}th{background:#f3f3f3}figure{margin:12px 0}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
"""


def to_html(blocks: Sequence[Block], folder: Path) -> str:
    """Self-contained HTML: every figure is read from ``folder`` and embedded as a data URI."""
    e = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "Evaluation report")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "code":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(c))}</th>" for c in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((Path(folder) / b[1]).read_bytes()).decode("ascii")
            out.append(f'<figure><img class="report-figure" alt="{e(b[2])}" data-file="{e(b[1])}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{e(b[2])}</figcaption></figure>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
