"""Every worker task a benchmark names by string ("module:function") resolves to a callable.

The benchmarks run their workloads in worker processes that import ``builder`` by name, so a moved
function would only fail inside ``monai-ext bench``; this catches it in the suite in milliseconds.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import monai_ext.bench

BENCH_DIR = Path(monai_ext.bench.__file__).parent
BUILDER = re.compile(r"[\"'](monai_ext\.bench\.[\w.]+):(\w+)[\"']")


def test_bench_builders_resolve() -> None:
    found = []
    for path in sorted(BENCH_DIR.glob("*.py")):
        for module, name in BUILDER.findall(path.read_text()):
            found.append((path.name, module, name))
            assert callable(getattr(importlib.import_module(module), name, None)), f"{path.name}: {module}:{name}"
    assert any(m.endswith("apf_tasks") for _, m, _ in found), found  # the APF tasks are named by string
