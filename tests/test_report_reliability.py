"""Evaluation reports state what a reader must know (issue 13, item 9): whether the data are synthetic (as
``prepare`` recorded it), no "95% CI" from a handful of cases (and why), and a provenance command that can be
pasted into a shell in the bundle folder."""

from __future__ import annotations

import ast
import json
import shlex
import sys

import numpy as np

from monai_ext.reports import classification_summary
from monai_ext.reports.provenance import command_line, data_origin_of, file_record
from monai_ext.reports.render import fmt_interval
from monai_ext.reports.writer import write_report


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    s = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.3, n), 0, 1)
    return [{"case_id": f"c{i:03d}", "label": int(a), "probability": float(b)} for i, (a, b) in enumerate(zip(y, s))]


def test_n2_gives_no_ci_and_says_why(tmp_path):
    m, _ = classification_summary(_records(2), n_bootstrap=200)
    assert m["auroc"]["value"] is not None
    assert m["auroc"]["ci_low"] is None and m["auroc"]["ci_high"] is None
    assert m["auroc"]["ci_note"] == "n=2 < 10: no CI"
    sens = m["operating_points"]["default"]["sensitivity"]
    assert sens["ci_low"] is None and sens["ci_note"] == "n=1 < 10: no CI"  # one positive case
    assert fmt_interval(m["auroc"]) == f"{m['auroc']['value']:.3f} (n=2 < 10: no CI)"
    write_report(tmp_path, "classification", _records(2), {"run": {"name": "tiny"}}, n_bootstrap=200)
    md = (tmp_path / "report.md").read_text()
    assert "n=2 < 10: no CI" in md and "n=2 &lt; 10: no CI" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["bootstrap"]["note"] == "n=2 < 10: no CI"
    # from 10 cases on, the interval is there
    m, _ = classification_summary(_records(10), n_bootstrap=200)
    assert m["auroc"]["ci_low"] is not None and "ci_note" not in m["auroc"]


def test_segmentation_class_with_few_cases_has_no_ci(tmp_path):
    dice = [[0.8, np.nan] if i % 4 else [0.7, 0.6] for i in range(12)]  # class b defined in 3 cases
    recs = [{"case_id": f"k{i}", "dice": d, "hd95": None} for i, d in enumerate(dice)]
    m = write_report(tmp_path, "segmentation", recs, {}, class_names=["a", "b"], n_bootstrap=100)
    assert m["dice"]["per_class"]["a"]["ci_low"] is not None
    assert m["dice"]["per_class"]["b"]["ci_note"] == "n=3 < 10: no CI"


def _datalist(path, origin):
    body = {"training": [], "validation": [], "test": []}
    if origin is not None:
        body["data_origin"] = origin
    path.write_text(json.dumps(body))


def test_report_says_data_are_synthetic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    origin = {"synthetic": True, "dataset": "vindr_cxr", "cases": 1200, "seed": 0, "raw": str(tmp_path / "raw"),
              "generator": "monai_ext.data.vindr_cxr.synthesize"}
    _datalist(tmp_path / "datalist.json", origin)
    prov = {"files": {"datalist": file_record(tmp_path / "datalist.json")}, "cwd": str(tmp_path)}
    assert prov["files"]["datalist"]["path"] == "datalist.json"  # relative to the bundle (working) folder
    m = write_report(tmp_path / "eval", "classification", _records(20), prov, n_bootstrap=100)
    assert m["data_origin"] == {k: v for k, v in origin.items() if k != "raw"}  # no machine path in metrics.json
    for name in ("report.md", "report.html"):
        assert "Data: SYNTHETIC (dataset vindr_cxr, cases 1200, seed 0" in (tmp_path / "eval" / name).read_text()
    assert json.loads((tmp_path / "eval" / "provenance.json").read_text())["data_origin"]["raw"] == origin["raw"]
    # real data (no marker) and data prepared before the origin was recorded
    _datalist(tmp_path / "datalist.json", {"synthetic": False})
    write_report(tmp_path / "real", "classification", _records(20), prov, n_bootstrap=100)
    assert "(real data)" in (tmp_path / "real" / "report.md").read_text()
    _datalist(tmp_path / "datalist.json", None)
    assert data_origin_of(prov)["synthetic"] is None
    m = write_report(tmp_path / "old", "classification", _records(20), prov, n_bootstrap=100)
    assert m["data_origin"]["synthetic"] is None
    assert "Data: origin unknown" in (tmp_path / "old" / "report.md").read_text()


def test_provenance_command_is_copy_pasteable(tmp_path, monkeypatch):
    for f in ("configs/train.yaml", "configs/evaluate.yaml", "data/prepared/datalist.json"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    monkeypatch.chdir(tmp_path)
    cfgs = str([str(tmp_path / "configs" / "train.yaml"), str(tmp_path / "configs" / "evaluate.yaml")])
    monkeypatch.setattr(sys, "argv", ["/venv/lib/monai/bundle/__main__.py", "run", "--config_file", cfgs,
                                      "--dataset_dir", str(tmp_path / "data" / "prepared"), "--name", "a b"])
    cmd = command_line()
    assert cmd[:4] == ["python", "-m", "monai.bundle", "run"]
    assert ast.literal_eval(cmd[5]) == ["configs/train.yaml", "configs/evaluate.yaml"]
    assert cmd[6:] == ["--dataset_dir", "data/prepared", "--name", "a b"]
    write_report(tmp_path / "eval", "classification", _records(20), {"command": cmd, "cwd": str(tmp_path)},
                 n_bootstrap=100)
    md = (tmp_path / "eval" / "report.md").read_text()
    line = md.split("```\n")[1].splitlines()[0]
    assert shlex.split(line) == cmd  # what a shell gives back is exactly the recorded argv
    assert str(tmp_path) not in line
    assert f"Command (run in the folder {tmp_path.name}/; paths relative to it):" in md
