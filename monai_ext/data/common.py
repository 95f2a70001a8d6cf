"""Shared pieces of dataset preparation: datalists, skip reports, grouped splits, content and split checks, the
synthetic-data marker.

What every dataset provides (``prepare``, ``synthesize``, their options, the required splits) is the interface in
:mod:`monai_ext.data.dataset`. Preparation is idempotent: a case whose outputs exist is not recomputed unless
``overwrite``. A case that cannot be read is skipped with its reason (file named), logged, and listed in
``skipped.json``: nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"
SKIPPED_NAME = "skipped.json"
SPLITS = ("training", "validation", "test")


class DataError(ValueError):
    """A problem with one input file; the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable, so that worker processes can report it
        return (type(self), (self.path, self.problem))


@dataclass
class SkipLog:
    """Collects cases that could not be prepared, with the reason."""

    entries: list[dict[str, str]] = field(default_factory=list)

    def add(self, case: str, reason: str | BaseException, path: str | os.PathLike | None = None) -> None:
        if isinstance(reason, DataError) and path is None:
            path = reason.path
        entry = {"case": str(case), "reason": str(reason)}
        if path is not None:
            entry["file"] = str(path)
        self.entries.append(entry)
        logger.warning("skipping case %s: %s", case, reason)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / SKIPPED_NAME
        path.write_text(json.dumps(self.entries, indent=2) + "\n")
        if self.entries:
            logger.warning("%d case(s) skipped; reasons in %s", len(self.entries), path)
        return path

    def __len__(self) -> int:
        return len(self.entries)


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer split sizes of ``n`` items in the given proportions (largest remainder)."""
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    raw = f * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def grouped_split(
    groups: Sequence[str], fractions: Sequence[float] = (0.64, 0.16, 0.20), seed: int = 0
) -> dict[str, str]:
    """Assign each group (e.g. patient id) to a split, deterministically for a seed.

    Returns ``{group: split_name}``; all items of a group land in the same split.
    """
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    counts = split_counts(len(uniq), fractions)
    assign: dict[str, str] = {}
    start = 0
    for name, c in zip(SPLITS, counts):
        for i in order[start : start + c]:
            assign[uniq[i]] = name
        start += c
    return assign


def relative_to(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def write_datalist(
    out_dir: Path,
    datalist: Mapping[str, Iterable[Mapping[str, Any]]],
    filename: str = DATALIST_NAME,
    **meta: Any,
) -> Path:
    """Write ``datalist.json`` (or ``filename``) with ``training``/``validation``/``test`` lists
    (paths relative to ``out_dir``, as MONAI's ``load_decathlon_datalist`` expects with
    ``base_dir``)."""
    out_dir = Path(out_dir)
    body: dict[str, Any] = {k: list(v) for k, v in datalist.items()}
    for s in SPLITS:
        body.setdefault(s, [])
    body.update(meta)
    path = out_dir / filename
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)
    logger.info("datalist %s: %s", path, ", ".join(f"{s}={len(body[s])}" for s in SPLITS))
    return path


def atomic_path(path: Path) -> Path:
    """A temporary sibling path to write to before renaming onto ``path`` (no half files)."""
    return path.with_name(f".{path.name}.partial{path.suffix}")


# ----------------------------------------------------------------------------------------------
# content checks shared by all datasets


def check_image_content(array: Any, path: str | os.PathLike, what: str = "image") -> None:
    """Raise :class:`DataError` naming ``path`` when ``array`` is empty, holds NaN / inf or is constant.

    Used by every dataset on what it read, before anything is resampled or cast (an all-NaN CT cast to
    int16 becomes an all-zero volume that looks valid)."""
    a = np.asarray(array)
    if a.size == 0:
        raise DataError(path, f"{what} is empty (shape {tuple(a.shape)})")
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        n_bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if n_bad:
            raise DataError(path, f"{what} holds {n_bad} non-finite value(s) (NaN or inf) of {a.size}")
    lo, hi = a.min(), a.max()
    if lo == hi:
        raise DataError(path, f"{what} is constant (every value is {float(lo):g}): no content")


# ----------------------------------------------------------------------------------------------
# provenance of the raw data: synthetic or not

SYNTHETIC_NAME = "SYNTHETIC.json"


def write_synthetic_marker(out: Path, dataset: str, cases: int, seed: int, **settings: Any) -> Path:
    """Mark ``out`` as synthetic data written by ``monai-ext synth`` (read by :func:`data_origin`)."""
    path = Path(out) / SYNTHETIC_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "synthetic": True,
        "dataset": dataset,
        "cases": int(cases),
        "seed": int(seed),
        "generator": f"monai_ext.data.synthetic.{dataset}.synthesize",
        **settings,
        "note": "synthetic data in the real on-disk layout; not patient data",
    }
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def data_origin(raw: Path) -> dict[str, Any]:
    """What is known of the origin of the raw folder: ``{"synthetic": True, ...}`` from the marker
    :func:`write_synthetic_marker` left, else ``{"synthetic": False}`` (no marker: real data as far as
    monai_ext knows). Recorded by every ``prepare`` in its datalist under ``data_origin``."""
    path = Path(raw) / SYNTHETIC_NAME
    if not path.is_file():
        return {"synthetic": False, "raw": str(raw), "note": f"no {SYNTHETIC_NAME} marker in the raw folder"}
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"synthetic-data marker is unreadable ({e})") from e
    return {**body, "synthetic": True, "raw": str(raw)}


# ----------------------------------------------------------------------------------------------
# split checks


class PrepareError(DataError):
    """A prepared dataset is unusable as a whole (an empty split, a classification split with one class)."""


def split_problems(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]],
    required: Sequence[str] = SPLITS,
    classes: Sequence[int] | None = None,
    label_key: str = "label",
) -> list[str]:
    """Problems of the ``required`` splits: empty, or (with ``classes``, classification) missing a class."""
    problems = []
    for split in required:
        items = list(datalist.get(split) or [])
        if not items:
            problems.append(f"split {split!r} is empty")
            continue
        if classes is not None:
            present = {int(e[label_key]) for e in items if isinstance(e.get(label_key), (int, np.integer))}
            missing = [c for c in classes if c not in present]
            if missing:
                problems.append(f"split {split!r} ({len(items)} cases) has no case of class {missing}")
    return problems


def check_splits(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]],
    out_dir: Path,
    required: Sequence[str] = SPLITS,
    classes: Sequence[int] | None = None,
    n_skipped: int | None = None,
) -> None:
    """Raise :class:`PrepareError` (one line, naming the datalist) when a required split is empty or a
    classification split lacks a class."""
    problems = split_problems(datalist, required, classes)
    if problems:
        skipped = f"; {n_skipped} case(s) skipped, reasons in {Path(out_dir) / SKIPPED_NAME}" if n_skipped else ""
        counts = ", ".join(f"{s}={len(datalist.get(s) or [])}" for s in SPLITS)
        raise PrepareError(Path(out_dir) / DATALIST_NAME, f"unusable: {'; '.join(problems)} ({counts}{skipped})")
