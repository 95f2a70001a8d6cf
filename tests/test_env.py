"""monai_ext.utils.env, the one source of environment information (benchmark reports and evaluation provenance),
checked against independent sources: git itself, sysconf, the imported modules."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata

import pytest

from monai_ext.utils import env


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_git_info_of_a_work_tree(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("a\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    info = env.git_info(repo / "a.txt")
    assert info["commit"] == _git(repo, "rev-parse", "HEAD") and len(info["commit"]) == 40
    assert info["dirty"] is False and info["untracked_files"] == 0
    (repo / "a.txt").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    info = env.git_info(repo)
    assert info["dirty"] is True and info["changed_files"] == 1 and info["untracked_files"] == 1
    outside = tmp_path / "plain"
    outside.mkdir()
    assert env.git_info(outside)["commit"] is None  # an installed wheel: no checkout around it


def test_machine_facts_against_the_system():
    mem = env.meminfo_bytes()
    if not mem:
        pytest.skip("no /proc/meminfo (not Linux)")
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert abs(mem["MemTotal"] - physical) / physical < 0.05
    assert 0 < mem["MemAvailable"] <= mem["MemTotal"]
    assert 1 <= env.usable_cores() <= (os.cpu_count() or 1)
    assert env.cpu_model() and env.cpu_model() != "unknown"
    load = env.load_average()
    assert load is not None and len(load) == 3 and min(load) >= 0


def test_versions_and_device():
    import torch

    assert env.package_versions(["torch", "no-such-distribution"]) == {
        "python": env.package_versions([])["python"], "torch": metadata.version("torch")}
    assert env.module_versions(["torch", "no_such_module"])["torch"] == torch.__version__
    assert env.module_versions(["no_such_module"])["no_such_module"] == "not installed"
    info = env.device_info("cpu")
    assert info["device"] == "cpu" and info["cpu_count"] == os.cpu_count()
    assert info["torch_threads"] == torch.get_num_threads()


def test_bench_and_reports_share_it():
    from monai_ext.bench import machine
    from monai_ext.reports import provenance

    assert machine.cpu_model is env.cpu_model and machine.meminfo_bytes is env.meminfo_bytes
    assert provenance.git_info is env.git_info and provenance.device_info is env.device_info
    assert provenance.package_versions is env.package_versions
    commit = env.git_info()["commit"]
    if commit:  # this checkout: the benchmark block names the same commit
        assert machine.versions()["git"].split("+")[0] == commit[:7]
