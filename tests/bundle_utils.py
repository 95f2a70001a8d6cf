"""Running a bundle through ``python -m monai.bundle run`` in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
# one intra-op thread per bundle process: tiny networks, and no oversubscription of a small CI machine
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def bundle_cmd(bundle: Path, configs: list[str], run_id: str, **overrides) -> list[str]:
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(files).replace('"', "'"),
           "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--logging_file", str(bundle / "configs" / "logging.conf")]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return cmd


def torchrun_bundle(bundle: Path, configs: list[str], nproc: int = 2, run_id: str = "run",
                    timeout: int = 300, **overrides) -> str:
    """``torchrun --nproc_per_node=nproc --standalone -m monai.bundle run ...`` on CPU (gloo); returns the log,
    fails with its tail if the run fails. ``--standalone`` takes a free port: no clash with a parallel run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           "-m"] + bundle_cmd(bundle, configs, run_id, **overrides)[2:]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=bundle)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{log[-6000:]}")
    return log


def run_bundle(bundle: Path, configs: list[str], run_id: str = "run", timeout: int = 300, check: bool = True,
               **overrides) -> subprocess.CompletedProcess:
    proc = subprocess.run(bundle_cmd(bundle, configs, run_id, **overrides), capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=bundle)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
