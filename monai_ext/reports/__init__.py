"""Reproducible evaluation reports.

:class:`EvaluationReport` is a MONAI / Ignite handler for a bundle's ``evaluate.yaml``: it reads the per-case
metric details the evaluator computed (segmentation) or each case's prediction (classification) and writes
``metrics.json`` (deterministic: seeded bootstrap CIs, rounded floats, sorted keys), ``per_case.csv``, figures,
``report.md``, a self-contained ``report.html`` and ``provenance.json``. :class:`SpacedHausdorffDistance`
(HD95 in mm) and :class:`SegmentationOverlays` are the handlers it reads from; :func:`check_checkpoint` runs
before the evaluation. :func:`write_report` writes the folder from per-case records (``monai-ext report
build``); :func:`compare_table` puts several evaluation folders in one table (``monai-ext report compare``).
See ``docs/reports.md``.

Modules: ``handler`` (the report handler), ``cases`` (per-case records), ``threshold`` (second operating point),
``distributed`` (gathering records across ranks), ``overlays``, ``metric_handlers``, ``checkpoint``,
``run_record`` / ``provenance`` (``provenance.json``), ``stats`` / ``summary`` (the numbers), ``writer`` /
``render`` / ``figures`` (the files), ``compare`` / ``cli`` (``monai-ext report``).

Names are imported lazily, so ``monai-ext`` (which imports :mod:`monai_ext.reports.cli`) does not load
torch / MONAI / matplotlib until a report command runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvaluationReport": "handler",
    "SegmentationOverlays": "overlays",
    "SpacedHausdorffDistance": "metric_handlers",
    "CheckpointMismatchError": "checkpoint",
    "check_checkpoint": "checkpoint",
    "case_id_of": "cases",
    "write_report": "writer",
    "read_cases_csv": "writer",
    "classification_summary": "summary",
    "segmentation_summary": "summary",
    "compare_table": "compare",
    "load_run": "compare",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
