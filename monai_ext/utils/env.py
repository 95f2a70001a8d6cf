"""What a result was computed with: CPU, memory, load, GPU, package versions and the git state of the code.

The one place for environment information: benchmark reports (:mod:`monai_ext.bench.machine`) and evaluation
provenance (:mod:`monai_ext.reports.provenance`) both read it from here. Read from ``/proc`` on Linux and from
the standard library elsewhere; MONAI's ``print_config`` / ``get_system_info`` print a fixed, much larger set
(and need ``psutil`` for memory), so they are not used. Imports nothing of monai_ext.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "PACKAGES",
    "peak_rss_mib",
    "cpu_model",
    "device_info",
    "git_info",
    "load_average",
    "meminfo_bytes",
    "module_versions",
    "package_versions",
    "usable_cores",
]

logger = logging.getLogger(__name__)

#: distributions whose versions an evaluation records (missing ones are skipped)
PACKAGES = ("monai_ext", "monai", "torch", "numpy", "pytorch-ignite", "scipy", "scikit-image", "scikit-learn",
            "matplotlib", "nibabel", "pydicom", "itk", "SimpleITK", "tifffile", "einops")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def meminfo_bytes() -> dict[str, int]:
    """``MemTotal``/``MemAvailable`` (and the other ``/proc/meminfo`` fields) in bytes; empty off Linux."""
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return out


def load_average() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load average, ``None`` where the platform has none."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit and dirty flag (tracked files changed) of the git work tree holding ``path`` (default: this
    package's source), or ``{"commit": None}`` outside a checkout (an installed wheel) or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if where.is_file():
        where = where.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        commit = git("rev-parse", "HEAD")
        changed = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines() if ln.strip()]
        untracked = [ln for ln in git("status", "--porcelain", "--untracked-files=normal").splitlines()
                     if ln.startswith("??")]
    except (OSError, subprocess.SubprocessError) as e:
        return {"commit": None, "note": f"not a git checkout or git unavailable ({type(e).__name__})"}
    return {"work_tree": top, "commit": commit, "dirty": bool(changed), "changed_files": len(changed),
            "untracked_files": len(untracked)}


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python's version and the installed distribution version of each of ``names`` (missing ones skipped)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def module_versions(modules: Sequence[str] = ("torch", "monai", "numpy", "monai_ext")) -> dict[str, str]:
    """Python's version and ``module.__version__`` of each of ``modules`` (``"not installed"`` when it does not
    import): the build tag included, e.g. ``2.13.0+cpu``, which distribution metadata may not show."""
    out = {"python": platform.python_version()}
    for mod in modules:
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - an optional module that fails to import is reported, not raised
            out[mod] = "not installed"
    return out


def device_info(device: Any = None) -> dict[str, Any]:
    """Device, platform, CPU, core count and torch threads; GPU name, CUDA and cuDNN versions on a CUDA device."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    info: dict[str, Any] = {"device": str(dev), "platform": platform.platform(), "cpu": cpu_model(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info.update(gpu=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident set size so far of process ``pid`` (default this one) in MiB: ``VmHWM`` of
    ``/proc/<pid>/status`` (Linux; reset by ``execve``, unlike ``getrusage``'s ``ru_maxrss``, which a child
    inherits from the process that started it); None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None
