"""The suite's own settings (tests/conftest.py): one intra-op thread per test process, and ``-n auto``'s worker
count (physical cores, at least 2 where 2 CPUs are usable, plus one) against lscpu's topology."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
from conftest import OMP_SET_BY_USER, auto_workers, physical_cores


def test_one_intra_op_thread_unless_the_user_chose():
    if OMP_SET_BY_USER:
        pytest.skip("OMP_NUM_THREADS was set by the user")
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 1


def test_auto_workers_are_the_physical_cores_at_least_two():
    if shutil.which("lscpu") is None:
        pytest.skip("lscpu is not installed")
    rows = subprocess.run(["lscpu", "-p=CPU,SOCKET,CORE"], capture_output=True, text=True, check=True).stdout
    cpus = [r.split(",") for r in rows.splitlines() if r and not r.startswith("#")]
    mine = os.sched_getaffinity(0)
    cores = len({(s, c) for cpu, s, c in cpus if int(cpu) in mine})
    assert physical_cores() == cores, rows
    quota = open("/sys/fs/cgroup/cpu.max").read().split() if os.path.exists("/sys/fs/cgroup/cpu.max") else ["max"]
    usable = len(mine) if quota[0] == "max" else min(len(mine), -(-int(quota[0]) // int(quota[1])))
    base = min(usable, max(2, cores))
    assert auto_workers() == (base + 1 if usable >= 2 else base), (rows, quota)
