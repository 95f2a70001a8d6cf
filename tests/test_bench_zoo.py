"""``monai-ext bench attention-zoo``: the table's numbers come from the models they name."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from monai_ext.bench.zoo import PAPER_TABLE, SETTINGS, ZooSettings, build_model, count_macs, run_zoo_bench
from monai_ext.cli import main


def test_zoo_rows_and_section(tmp_path):
    from monai_ext.bench.machine import MachineInfo

    machine = MachineInfo("test cpu", 2, 2, 1.0, 1.0, None, 0.0, 0, 0.0)  # (machine_info() takes ~40 s here)
    s = ZooSettings("cpu", "cpu", 28, 1, 3, batch=2, repeats=1)
    md = tmp_path / "bench.md"
    result = run_zoo_bench([s], md, machine, "cmd", {"ViT (softmax)": "softmax",
                                                                         "Fastformer": "fastformer"}, ["cpu"])
    rows = result["rows"]
    assert [r["attention"] for r in rows] == ["softmax", "fastformer"]
    for r in rows:
        torch.manual_seed(0)
        net = build_model(s, r["attention"])
        assert r["params_m"] == pytest.approx(sum(p.numel() for p in net.parameters()) / 1e6)
        assert r["gmacs"] == pytest.approx(count_macs(net, s)) and r["gmacs"] > 0
        assert r["latency_s"] > 0 and r["throughput"] > 0
    text = md.read_text()
    assert "<!-- monai-ext bench: attention-zoo -->" in text and "| Fastformer | cpu |" in text
    with open(tmp_path / "bench" / "attention_zoo.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_count_macs_of_a_linear_layer_and_paper_setting():
    s = dataclasses.replace(SETTINGS["cpu"], img_size=4, in_channels=1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    assert count_macs(net, s) == pytest.approx(16 * 5 / 1e9)
    assert SETTINGS["paper"].attention_kwargs["linformer"] == {"proj_len": 48} and "softmax" in PAPER_TABLE


def test_cli_refuses_unknown_models(tmp_path):
    with pytest.raises(SystemExit, match="unknown --zoo-models \\['vit'\\]"):
        main(["bench", "attention-zoo", "--quick", "--no-gemm", "--zoo-models", "vit", "--out",
              str(tmp_path / "b.md")])
