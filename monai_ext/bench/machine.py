"""What machine a benchmark ran on: CPU, cores, memory, load, measured GEMM and copy throughput, versions.

The environment facts come from :mod:`monai_ext.utils.env` (shared with evaluation provenance); this module
adds the throughput measurements and the markdown block.

Every benchmark section in ``docs/benchmarks.md`` starts with this block, so numbers from different
machines (or from a machine that was busy) are never compared blindly.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monai_ext.utils.env import cpu_model, git_info, load_average, meminfo_bytes, module_versions, usable_cores

__all__ = [
    "MachineInfo",
    "command_line",
    "cpu_model",
    "machine_info",
    "measure_copy_gbps",
    "measure_gemm_gflops",
    "meminfo_bytes",
    "versions",
]

logger = logging.getLogger(__name__)

GIB = 1024**3


def available_memory_bytes() -> int:
    """Memory a new allocation can get without swapping (``MemAvailable``); 8 GiB if unknown."""
    return meminfo_bytes().get("MemAvailable", 8 * GIB)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GEMM throughput of ``torch.matmul`` on two ``n x n`` matrices: ``2 n^3 / t`` (best of ``repeats``).

    The best rather than the median is taken: it is the machine's capability, what the attention
    kernels are compared against; load from other processes only lowers it.
    """
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.matmul(a, b)  # warm-up (thread pool, MKL buffers)
    t = _best_time(lambda: torch.matmul(a, b), repeats)
    return 2.0 * n**3 / t / 1e9


def measure_copy_gbps(mib: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth seen by ``Tensor.copy_`` on ``mib`` MiB buffers: (read + write) bytes / t, GB/s."""
    import torch

    src = torch.ones(mib * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _best_time(lambda: dst.copy_(src), repeats)
    return 2.0 * src.numel() * 4 / t / 1e9


def versions() -> dict[str, str]:
    """Versions of the software the numbers depend on (and the git commit of this checkout, if any)."""
    out = module_versions(("torch", "monai", "numpy", "monai_ext"))
    try:
        import torch

        out["torch threads"] = str(torch.get_num_threads())
        out["BLAS"] = "MKL" if torch.backends.mkl.is_available() else "other"
    except ImportError:  # pragma: no cover - reported as "not installed" above
        logger.debug("torch not importable: no thread or BLAS information")
    git = git_info()
    if git.get("commit"):
        out["git"] = git["commit"][:7] + ("+dirty" if git["dirty"] else "")
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it (``monai-ext ...`` when run through the CLI)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("monai-ext", "cli.py", "__main__.py"):
        argv = ["monai-ext", *argv[1:]]
    return shlex.join(argv)


@dataclass
class MachineInfo:
    """The machine block of a benchmark report."""

    cpu: str
    logical_cores: int
    usable_cores: int
    memory_total_gib: float
    memory_available_gib: float
    load_average: tuple[float, float, float] | None
    gemm_gflops: float
    gemm_size: int
    copy_gbps: float
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self, command: str | None = None, load_after: tuple[float, float, float] | None = None) -> str:
        """A short markdown list: machine, measured throughput, versions and the exact command."""
        la = "n/a" if self.load_average is None else ", ".join(f"{x:.2f}" for x in self.load_average)
        lines = [
            (f"- Machine: {self.cpu}; {self.usable_cores} usable of {self.logical_cores} logical cores; "
             f"{self.memory_total_gib:.1f} GiB RAM ({self.memory_available_gib:.1f} GiB available at start)"),
            (f"- Measured: fp32 GEMM {self.gemm_gflops:.1f} GFLOP/s (`torch.matmul`, "
             f"{self.gemm_size}x{self.gemm_size}, best of 5); memory copy {self.copy_gbps:.1f} GB/s "
             "(`Tensor.copy_`, 256 MiB, read+write)"),
            f"- Load average (1/5/15 min) at start: {la}"
            + ("" if load_after is None else "; at end: " + ", ".join(f"{x:.2f}" for x in load_after))
            + " (the machine is shared: a load above the core count means other jobs competed)",
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            f"- Date: {self.date}",
        ]
        if command:
            lines.append(f"- Command: `{command}`")
        return "\n".join(lines)


def machine_info(gemm_size: int = 2048, measure: bool = True, threads: int | None = None) -> MachineInfo:
    """Collect :class:`MachineInfo`; ``measure=False`` skips the GEMM/copy measurements (reported as 0).
    ``threads``: torch threads for the measurements (the benchmark workers' setting; default torch's)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))

    mem = meminfo_bytes()
    usable = usable_cores()
    load = load_average()
    gemm = measure_gemm_gflops(gemm_size) if measure else 0.0
    copy = measure_copy_gbps() if measure else 0.0
    info = MachineInfo(
        cpu=cpu_model(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=min(usable, torch.get_num_threads()) if usable else torch.get_num_threads(),
        memory_total_gib=mem.get("MemTotal", 0) / GIB,
        memory_available_gib=mem.get("MemAvailable", 0) / GIB,
        load_average=load,
        gemm_gflops=gemm,
        gemm_size=gemm_size,
        copy_gbps=copy,
        versions=versions(),
        date=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )
    logger.info("machine: %s, %d cores, GEMM %.1f GFLOP/s, copy %.1f GB/s, load %s", info.cpu, info.usable_cores,
                info.gemm_gflops, info.copy_gbps, load)
    return info
