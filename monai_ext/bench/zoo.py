"""``monai-ext bench attention-zoo``: every attention in the same pyramid backbone, beside the paper's table.

The efficient-transformers benchmark (``Benchmarking Efficient Transformers for Medical Imaging``: RadImageNet
brain MRI) keeps one pyramid backbone (:class:`monai_ext.networks.PyramidTransformer`) and changes only the
attention. Measured here for each registered attention of the zoo plus the project's ``softmax_free`` and
``sima`` and MONAI's ResNet-50 (``conv1_t_stride=2``: the torchvision/paper stem):

- parameters (1000-class heads, as the paper's table: its ResNet-50 has 25.6M);
- GMACs of one image (``torch.utils.flop_counter`` on the meta device, divided by 2: the paper's "FLOPS
  (Giga)" are multiply-accumulates, 4.0 for ResNet-50);
- batch-1 latency (median of ``repeats`` forward passes in ``inference_mode`` after one warm-up) and throughput
  (images/s at ``batch``), on this CPU and on CUDA when present.

Two settings: ``paper`` (the ``paper`` preset, 3 x 224 x 224, Linformer ``k = 48`` and Swin window 8, which
reproduce the paper's parameter counts) and ``cpu`` (the ``cpu`` preset, 1 x 112 x 112, 10 classes).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .machine import MachineInfo
from .report import artifact_dir, fmt_num, md_table, update_section, write_csv

__all__ = ["ZOO_MODELS", "PAPER_TABLE", "ZooSettings", "build_model", "count_macs", "time_model", "zoo_rows",
           "run_zoo_bench"]

logger = logging.getLogger(__name__)

#: row label -> attention name (None: MONAI's ResNet-50)
ZOO_MODELS: dict[str, str | None] = {
    "ViT (softmax)": "softmax", "Linformer": "linformer", "Performer": "performer", "Fastformer": "fastformer",
    "XCiT (xca)": "xca", "Swin (window)": "window", "softmax_free (ours)": "softmax_free", "SimA (ours)": "sima",
    "ResNet-50 (MONAI)": None,
}

#: the paper's table: Intel Xeon s, RTX 2060 Ti s, A100 s, GFLOPs, parameters (M)
PAPER_TABLE: dict[str, tuple[float, float, float, float, float]] = {
    "linformer": (7.13, 0.18, 0.09, 1.56, 28.56), "performer": (6.249, 0.16, 0.07, 1.47, 28.28),
    "window": (6.86, 0.18, 0.086, 1.50, 28.28), "resnet50": (8.63, 0.2, 0.12, 4.00, 25.6),
    "softmax": (8.904, 0.26, 0.13, 1.91, 28.27), "fastformer": (4.589, 0.14, 0.05, 1.45, 28.28),
    "xca": (6.452, 0.17, 0.07, 1.47, 28.28),
}

#: attention arguments of the paper's setting (Linformer k reproducing its 28.56M; Swin window 8 for patch 7)
PAPER_KWARGS: dict[str, dict[str, Any]] = {"linformer": {"proj_len": 48}, "window": {"window_size": 8}}


@dataclass
class ZooSettings:
    """One setting of the zoo benchmark."""

    name: str = "cpu"
    preset: str = "cpu"
    img_size: int = 112
    in_channels: int = 1
    num_classes: int = 10
    batch: int = 8
    repeats: int = 5
    attention_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)


SETTINGS = {
    "paper": ZooSettings("paper", "paper", 224, 3, 1000, 4, 3, PAPER_KWARGS),
    "cpu": ZooSettings("cpu", "cpu", 112, 1, 10, 8, 5, {"window": {"window_size": 4}}),
}


def build_model(s: ZooSettings, attention: str | None):
    """The pyramid with ``attention``, or MONAI's ResNet-50 for None."""
    if attention is None:
        from monai.networks.nets import resnet50

        return resnet50(spatial_dims=2, n_input_channels=s.in_channels, num_classes=s.num_classes, conv1_t_stride=2)
    from monai_ext.networks import PyramidTransformer

    return PyramidTransformer(s.in_channels, s.num_classes, s.img_size, preset=s.preset, attention=attention,
                              attention_kwargs=s.attention_kwargs.get(attention))


def count_macs(model, s: ZooSettings) -> float:
    """Multiply-accumulates of one image (counted FLOPs / 2) on the meta device, in G."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, s.in_channels, s.img_size, s.img_size, device="meta"))
    return counter.get_total_flops() / 2e9


def time_model(model, s: ZooSettings, device: str) -> tuple[float, float]:
    """Median batch-1 latency (s) and throughput (images/s at ``s.batch``) of forward passes."""
    import torch

    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run(x) -> float:
        sync()
        t0 = time.perf_counter()
        model(x)
        sync()
        return time.perf_counter() - t0

    with torch.inference_mode():
        one = torch.randn(1, s.in_channels, s.img_size, s.img_size, device=device)
        run(one)  # warm-up
        latency = statistics.median(run(one) for _ in range(s.repeats))
        many = torch.randn(s.batch, s.in_channels, s.img_size, s.img_size, device=device)
        run(many)
        batch_t = statistics.median(run(many) for _ in range(max(1, s.repeats // 2)))
    return latency, s.batch / batch_t


def zoo_rows(s: ZooSettings, models: dict[str, str | None], devices: list[str]) -> list[dict[str, Any]]:
    """One row per model and device."""
    import torch

    rows = []
    for label, attention in models.items():
        torch.manual_seed(0)
        model = build_model(s, attention)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        macs = count_macs(model, s)
        for device in devices:
            latency, throughput = time_model(model, s, device)
            key = attention or "resnet50"
            paper = PAPER_TABLE.get(key) if s.name == "paper" else None
            rows.append({"setting": s.name, "model": label, "attention": key, "device": device,
                         "params_m": params, "gmacs": macs, "latency_s": latency, "throughput": throughput,
                         "paper_params_m": paper[4] if paper else float("nan"),
                         "paper_gflops": paper[3] if paper else float("nan"),
                         "paper_xeon_s": paper[0] if paper else float("nan"),
                         "paper_a100_s": paper[2] if paper else float("nan")})
            logger.info("zoo %s %s on %s: %.2fM params, %.3f GMACs, %.4f s, %.1f img/s", s.name, label, device,
                        params, macs, latency, throughput)
        model.to("cpu")
    return rows


def _table(rows: list[dict[str, Any]], paper: bool) -> str:
    cols = [("model", "model"), ("device", "device"), ("params_m", "params (M)"), ("gmacs", "GMACs"),
            ("latency_s", "batch-1 latency (s)"), ("throughput", "throughput (img/s)")]
    if paper:
        cols += [("paper_params_m", "paper params (M)"), ("paper_gflops", "paper GFLOPs"),
                 ("paper_xeon_s", "paper Xeon (s)"), ("paper_a100_s", "paper A100 (s)")]
    fmt = {"params_m": lambda v: f"{v:.2f}", "gmacs": lambda v: f"{v:.2f}" if v >= 1 else f"{v:.3f}",
           "paper_params_m": lambda v: fmt_num(v, 4), "latency_s": lambda v: fmt_num(v, 3)}
    return md_table(rows, cols, fmt)


def run_zoo_bench(settings: list[ZooSettings], out_md: Path, machine: MachineInfo, command: str,
                  models: dict[str, str | None] | None = None, devices: list[str] | None = None) -> dict[str, Any]:
    """Measure every setting, write ``attention_zoo.csv`` and the ``attention-zoo`` section of ``out_md``."""
    import os

    import torch

    models = models or ZOO_MODELS
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[dict[str, Any]] = []
    for s in settings:
        rows += zoo_rows(s, models, devices)
    csv_path = write_csv(artifact_dir(out_md) / "attention_zoo.csv", rows)
    out = ["## Efficient-attention zoo in one pyramid backbone (efficient-transformers benchmark)", "",
           machine.markdown(command, os.getloadavg() if hasattr(os, "getloadavg") else None), "",
           "Backbone `monai_ext.networks.PyramidTransformer` (patch 7 / stride 7, 2x2 patch merging, mean "
           "pooling, linear head; only the attention changes), preset `paper`: widths 96-192-384-768, depths "
           "2-2-6-2, heads 3-6-12-24, MLP 4x; preset `cpu`: widths 32-64-128-256, depths 1-1-2-1, heads 1-2-4-8, "
           "MLP 2x. ResNet-50: MONAI's `resnet50(conv1_t_stride=2)`, the same network in both settings. "
           "GMACs: `torch.utils.flop_counter` on the meta device / 2 (the paper's \"FLOPS\" are "
           "multiply-accumulates: its ResNet-50 has 4.0). Latency: median of forward passes at batch 1 in "
           "`inference_mode` after a warm-up; throughput at the batch given. The paper's latencies (Intel Xeon, "
           "A100) come from its table and are averaged over its whole test set, so only the ordering compares; "
           "its parameter counts include 1000-class heads, as here in the paper setting.", ""]
    for s in settings:
        part = [r for r in rows if r["setting"] == s.name]
        out += [f"### Setting `{s.name}`: preset `{s.preset}`, {s.in_channels} x {s.img_size} x {s.img_size}, "
                f"{s.num_classes} classes, throughput at batch {s.batch}, {s.repeats} timed repeats"
                + (f", attention arguments {s.attention_kwargs}" if s.attention_kwargs else ""), "",
                _table(part, s.name == "paper"), ""]
    out += [f"Files: [attention_zoo.csv]({Path(os.path.relpath(csv_path, Path(out_md).parent)).as_posix()})"]
    update_section(out_md, "attention-zoo", "\n".join(out) + "\n")
    return {"rows": rows, "files": {"attention_zoo.csv": csv_path}}
