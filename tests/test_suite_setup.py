"""The suite's own settings (tests/conftest.py): one intra-op thread per test process, and ``-n auto``'s worker
count (physical cores) against lscpu's topology."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
from conftest import OMP_SET_BY_USER, physical_cores


def test_one_intra_op_thread_unless_the_user_chose():
    if OMP_SET_BY_USER:
        pytest.skip("OMP_NUM_THREADS was set by the user")
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 1


def test_auto_workers_are_the_physical_cores():
    if shutil.which("lscpu") is None:
        pytest.skip("lscpu is not installed")
    rows = subprocess.run(["lscpu", "-p=CPU,SOCKET,CORE"], capture_output=True, text=True, check=True).stdout
    cpus = [r.split(",") for r in rows.splitlines() if r and not r.startswith("#")]
    mine = os.sched_getaffinity(0)
    want = len({(s, c) for cpu, s, c in cpus if int(cpu) in mine})
    got = physical_cores()
    assert 1 <= got <= len(mine)
    quota = open("/sys/fs/cgroup/cpu.max").read().split()[0] if os.path.exists("/sys/fs/cgroup/cpu.max") else "max"
    if quota == "max":
        assert got == want, (got, want, rows)
    else:
        assert got <= want
