"""Writing benchmark results: markdown sections replaced in place, CSV tables, PNG plots.

``docs/benchmarks.md`` holds one section per benchmark between HTML-comment markers::

    <!-- monai-ext bench: attention -->
    ...
    <!-- /monai-ext bench: attention -->

Re-running one benchmark replaces its section and keeps every other section (and any hand-written
text outside the markers) as it was. CSV and PNG files go to a folder beside the markdown file named
after it (``docs/benchmarks.md`` -> ``docs/benchmarks/``).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SECTION_ORDER",
    "artifact_dir",
    "update_section",
    "read_section",
    "write_csv",
    "md_table",
    "fmt_num",
    "fmt_ratio",
    "plot_lines",
]

logger = logging.getLogger(__name__)

#: canonical order of sections in the markdown file (new sections are inserted accordingly)
SECTION_ORDER = ("attention", "apf", "apf-gigapixel", "3d", "attention-zoo")

HEADER = """# Benchmarks

Written by `monai-ext bench` (see `monai_ext/bench/`); each section says on which machine, with
which versions and with which exact command it was measured. Benchmarks are commands, not tests:
re-run `monai-ext bench all` (or one of `attention`, `apf`, `3d`) to refresh a section; the other
sections are kept. Raw numbers: the CSV files in `benchmarks/` beside this file.
"""


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- monai-ext bench: {name} -->", f"<!-- /monai-ext bench: {name} -->"


def artifact_dir(md_path: Path) -> Path:
    """Folder for the CSV/PNG files of ``md_path`` (``docs/benchmarks.md`` -> ``docs/benchmarks/``)."""
    md_path = Path(md_path)
    return md_path.with_suffix("") if md_path.suffix else md_path.parent / (md_path.name + "_files")


def read_section(md_path: Path, name: str) -> str | None:
    """The body of section ``name`` (between its markers), or None."""
    md_path = Path(md_path)
    if not md_path.exists():
        return None
    text = md_path.read_text(encoding="utf-8")
    start, end = _markers(name)
    m = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    return m.group(1) if m else None


def update_section(md_path: Path, name: str, body: str) -> None:
    """Write ``body`` as section ``name`` of ``md_path``: replace it if present, else insert it in
    :data:`SECTION_ORDER` order (unknown names go last). Creates the file with a header if needed."""
    md_path = Path(md_path)
    start, end = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = md_path.read_text(encoding="utf-8") if md_path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        order = list(SECTION_ORDER)
        rank = order.index(name) if name in order else len(order)
        insert_at = None
        for later in order[rank + 1:]:
            pos = text.find(_markers(later)[0])
            if pos >= 0 and (insert_at is None or pos < insert_at):
                insert_at = pos
        if insert_at is None:
            text = text.rstrip() + "\n\n" + block + "\n"
        else:
            text = text[:insert_at] + block + "\n\n" + text[insert_at:]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")
    logger.info("wrote section %r of %s", name, md_path)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) to ``path``; columns = ``columns`` or the union of keys in first-seen order.
    Floats are written with 6 significant digits; NaN as empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)

    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"
        return "" if v is None else v

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([cell(r.get(c)) for c in columns])
    logger.info("wrote %s (%d rows)", path, len(rows))
    return path


def fmt_num(v: Any, digits: int = 3) -> str:
    """Compact number: 3 significant digits, ``-`` for missing/NaN."""
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 10 ** digits:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def fmt_ratio(v: float | None) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    return f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def md_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
             formatters: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """A markdown table of ``rows``; ``columns`` = ``[(key, header), ...]``."""
    formatters = formatters or {}
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key)
            s = formatters[key](v) if key in formatters else fmt_num(v)
            cells.append(s.replace("|", "\\|").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_lines(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
               ylabel: str, title: str, logx: bool = True, logy: bool = True,
               hline: tuple[float, str] | None = None) -> Path | None:
    """Line plot of ``{label: (xs, ys)}`` (NaN points dropped) to a PNG; returns the path (None if
    matplotlib is missing or nothing is finite)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        logger.warning("matplotlib not available: %s not written", path)
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    drawn = 0
    for label, (xs, ys) in series.items():
        pts = [(x, y) for x, y in zip(xs, ys)
               if y is not None and not (isinstance(y, float) and math.isnan(y)) and (y > 0 or not logy)]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        drawn += 1
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    if not drawn:
        plt.close(fig)
        return None
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.fill(part, 80) for part in title.split("\n")), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
