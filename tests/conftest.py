"""Suite-wide settings: one intra-op thread per test process, and the worker count of ``-n auto``.

The suite runs on every core through pytest-xdist (``-n auto --dist loadfile``, see docs/testing.md "Suite time"):
each worker is one process, and each bundle subprocess already runs with ``OMP_NUM_THREADS=1``
(tests/bundle_utils.py). A worker that also used every core for its own torch / numpy work would oversubscribe a
small CI machine. The variable is set here, before any test module imports torch, unless the user set it.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

# xdist workers inherit the controller's environment: the marker tells them the 1 came from here, not the user
OMP_SET_BY_USER = "OMP_NUM_THREADS" in os.environ and "MONAI_EXT_TESTS_OMP_DEFAULT" not in os.environ
if not OMP_SET_BY_USER:
    os.environ.update({"OMP_NUM_THREADS": "1", "MONAI_EXT_TESTS_OMP_DEFAULT": "1"})
    if "torch" in sys.modules:  # imported by a plugin before this file: the variable came too late for it
        sys.modules["torch"].set_num_threads(1)


def _cpu_quota() -> int | None:
    """CPUs allowed by the cgroup v2 quota (``cpu.max``: "QUOTA PERIOD", rounded up); None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _usable_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may run on: distinct (package, core) pairs of its CPUs in /sys; the CPU count
    where the topology cannot be read. Hyperthread siblings count once."""
    cpus = _usable_cpus()
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def auto_workers() -> int:
    """``-n auto``'s worker count: one per physical core, but at least 2 where 2 CPUs are usable (a 2-vCPU CI box is
    often one core with two hyperthreads), capped by the usable CPUs and the cgroup quota, plus one where 2 or more
    CPUs are usable: a worker waits a third of its time (bundle subprocesses starting, torchrun rendezvous, sleeps),
    and a third worker fills those gaps (docs/testing.md "Suite time": 523 s with 3 workers on 2 cores against
    616-631 s with 2). ``-n logical`` would give a 16-thread box 16."""
    cpus = len(_usable_cpus())
    usable = min(cpus, _cpu_quota() or cpus)
    base = max(1, min(usable, max(2, physical_cores())))
    return base + 1 if usable >= 2 else base


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` = :func:`auto_workers`; ``-n logical`` and ``PYTEST_XDIST_AUTO_NUM_WORKERS`` are left to
    pytest-xdist."""
    if config.option.numprocesses == "logical" or os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return auto_workers()
