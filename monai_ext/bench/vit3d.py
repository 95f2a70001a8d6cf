"""3D ViT benchmark: DUKE-sized breast MRI volumes through the 3D ViT with each attention.

DUKE-Breast-Cancer-MRI volumes resampled to (0.7, 0.7, 3) mm are about 512 x 512 x 50-70 voxels;
the per-breast crops the DUKE bundle classifies are half of that in-plane. Default inputs:
``256x256x32`` (one breast, 2048 tokens at patch (16, 16, 4)) and ``512x512x64`` (the whole
bilateral volume, 16384 tokens). Same models, method and output columns as the 2D attention
benchmark (:mod:`monai_ext.bench.attention`), 1 input channel (the subtraction image).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from .attention import AttentionBenchSettings, _check_settings, scaling_pass, shape_name
from .attention_report import _load, files_markdown, method_text, scaling_plots, scaling_table
from .machine import MachineInfo
from .report import artifact_dir, fmt_num, update_section, write_csv

__all__ = ["run_3d_bench"]

logger = logging.getLogger(__name__)


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["model"], r["tokens"]): r for r in rows}
    lines = []
    for n in sorted({r["tokens"] for r in rows}):
        sf = by.get(("softmax_free", n))
        if not sf or sf["status"] != "ok" or math.isnan(sf["train_s"]):
            continue
        parts = []
        for key, name in (("monai_plain", "MONAI plain"), ("monai_sdpa", "MONAI SDPA"), ("softmax", "our SDPA"),
                          ("sima", "SimA")):
            r = by.get((key, n))
            if r is None:
                continue
            if r["status"] == "ok" and not math.isnan(r["train_s"]):
                mem = r["train_peak_mib"] / sf["train_peak_mib"] if sf["train_peak_mib"] else math.nan
                parts.append(f"{name} takes {r['train_s'] / sf['train_s']:.2f}x the time and {mem:.2f}x the memory")
            else:
                parts.append(f"{name}: {r['note'] or r['status']}")
        lines.append(f"- {sf['image']} ({n} tokens): softmax_free training step {fmt_num(sf['train_s'])} s, "
                     f"peak {fmt_num(sf['train_peak_mib'])} MiB; " + "; ".join(parts) + ".")
    return lines


def run_3d_bench(s: AttentionBenchSettings, out_md: Path, machine: MachineInfo, command: str) -> dict[str, Any]:
    """Run the 3D scaling pass, write ``3d.csv``, plots and the ``3d`` section of ``out_md``."""
    if not s.volumes:
        raise ValueError("the 3D benchmark needs volumes, e.g. [(256, 256, 32)]")
    _check_settings(s)
    rows = scaling_pass(s)
    adir = artifact_dir(out_md)
    files: dict[str, Path] = {"vit3d.csv": write_csv(adir / "vit3d.csv", rows)}
    if len(s.shapes) > 1:
        files.update(scaling_plots(s, rows, adir, "vit3d"))
    out = ["## 3D ViT on DUKE-sized breast MRI volumes", "", machine.markdown(command, _load()), "",
           "Volumes: " + ", ".join(shape_name(sh) for sh in s.shapes)
           + " voxels (DUKE at (0.7, 0.7, 3) mm: one breast about 256x256x32, both about 512x512x64).", "",
           method_text(s), "", scaling_table(rows), "", "Summary (ratios = other / softmax_free):"]
    out += _summary(rows) or ["- softmax_free did not run."]
    out += files_markdown(files, Path(out_md).parent)
    update_section(out_md, "3d", "\n".join(out) + "\n")
    return {"rows": rows, "files": files}
