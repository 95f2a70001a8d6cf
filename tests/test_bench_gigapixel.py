"""``monai-ext bench apf-gigapixel`` without the gigapixel sizes: both measurement paths in this process on a small
synthetic slide (same leaves, same tokens from level 0), and the report section they make."""

from __future__ import annotations

import numpy as np

from monai_ext.bench.gigapixel import GigapixelSettings, _measure, _report
from monai_ext.bench.machine import machine_info
from monai_ext.data.synthetic.paip_pyramid import write_pyramidal_case


def test_both_paths_agree_and_the_section_is_written(tmp_path):
    slide = write_pyramidal_case(tmp_path, "bench_1024", 1024, seed=0)["image"]
    s = {"patch_size": 8, "num_tokens": 256, "blur_kernel": 3, "tile": 512, "workers": 1}
    rows = []
    for mode in ("streaming", "in_memory"):
        r = _measure(mode, str(slide), s)
        assert r["leaves"] == 256 and r["tokens_shape"] == [3, 128, 128]
        assert 0 < r["plan_s"] <= r["total_s"] and r["peak_rss_mib"] >= r["rss_start_mib"] > 0
        rows.append({"size": 1024, "path": mode, "L": 256, "p": 8, "slide_mib": 0.1, **r})
    rows.append({"size": 65536, "path": "in_memory", "L": 256, "p": 8, "slide_mib": 1.0,
                 "error": "not run: needs ~28 GiB, 20 available"})
    out = tmp_path / "docs" / "benchmarks.md"
    _report(rows, GigapixelSettings(sizes=(1024,), num_tokens=256, patch_size=8, work_dir=tmp_path), out,
            machine_info(measure=False), "monai-ext bench apf-gigapixel --giga-sizes 1024")
    text = out.read_text()
    assert "<!-- monai-ext bench: apf-gigapixel -->" in text and "| 1,024 px | streaming |" in text
    assert "| 1,024 px | in memory |" in text and "not run: needs ~28 GiB" in text
    assert (tmp_path / "docs" / "benchmarks" / "apf_gigapixel.csv").is_file()
    assert np.isfinite(rows[1]["total_s"] / rows[0]["total_s"])
