"""Smoke test of ``monai-ext bench``: the quick attention benchmark on tiny sizes writes its markdown
section, CSV and plots with real measurements; re-running keeps other sections."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from monai_ext.bench.apf import dice_score
from monai_ext.bench.attention import extrapolate, plain_attention_bytes
from monai_ext.bench.report import read_section, update_section
from monai_ext.cli import main


def test_update_section_replaces_in_place(tmp_path):
    md = tmp_path / "b.md"
    update_section(md, "apf", "APF v1")
    update_section(md, "attention", "ATT v1")  # inserted before apf (canonical order)
    md.write_text(md.read_text() + "\nhand-written note\n")
    update_section(md, "apf", "APF v2")
    text = md.read_text()
    assert read_section(md, "apf").strip() == "APF v2" and "APF v1" not in text
    assert read_section(md, "attention").strip() == "ATT v1"
    assert text.index("ATT v1") < text.index("APF v2") and "hand-written note" in text


def test_predictions():
    # MONAI's plain path at 16384 tokens, 8 heads, 2 layers: 4 fp32 score matrices of 8 x 16384^2
    assert plain_attention_bytes(16384, 8, 2, train=True) == 4 * 8 * 16384**2 * 4
    # exponent from the last two points, clamped to [1, 2]
    assert extrapolate([(100, 1.0), (200, 4.0)], 400, 1.0) == pytest.approx(16.0)
    assert extrapolate([(100, 1.0), (200, 1.0)], 400, 2.0) == pytest.approx(2.0)
    assert math.isnan(extrapolate([], 400, 1.0))


@pytest.mark.timeout(300)
def test_quick_attention_bench_writes_report(tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    rc = main(["bench", "attention", "--quick", "--sizes", "32", "64", "--hidden", "32", "--heads", "2",
               "--layers", "1", "--mlp", "64", "--models", "softmax_free", "monai_plain", "--threads", "1",
               "--no-profile", "--out", str(out)])
    assert rc == 0
    section = read_section(out, "attention")
    assert section is not None and "## Attention scaling" in section
    assert "Command: `" in section and "GEMM" in section
    rows = list(csv.DictReader((tmp_path / "docs" / "benchmarks" / "attention.csv").open()))
    assert {(r["model"], r["tokens"]) for r in rows} == {(m, t) for m in ("softmax_free", "monai_plain")
                                                          for t in ("4", "16")}
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["train_s"]) > 0 and float(r["infer_s"]) > 0
        assert float(r["train_peak_mib"]) >= 0
    # the markdown table carries the same measured numbers
    sf16 = next(r for r in rows if r["model"] == "softmax_free" and r["tokens"] == "16")
    assert f"{float(sf16['train_s']):.3g}" in section
    core = list(csv.DictReader((tmp_path / "docs" / "benchmarks" / "attention_core.csv").open()))
    assert core and all(float(r["core_gflops"]) > 0 for r in core if r["status"] == "ok")
    assert (tmp_path / "docs" / "benchmarks" / "attention_train_time.png").stat().st_size > 1000


def test_dice_score():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_score(a, b) == 1.0  # both empty
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert dice_score(a, b) == pytest.approx(2 * 4 / 16)
