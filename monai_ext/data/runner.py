"""Helpers for long, idempotent preparation runs.

- :func:`run_cases`: one preparation function over many cases, with a progress bar and optional
  worker processes. A failing case does not stop the run: its exception is returned with it, so
  that the caller can list it in ``skipped.json`` (:class:`monai_ext.data.common.SkipLog`).
- :func:`check_settings`: refuse to mix files prepared with different settings in one folder.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from monai_ext.data.common import DATALIST_NAME, DataError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _call(func: Callable[[T], Any], case: T) -> tuple[Any, tuple[str, str, str] | None]:
    """Run one case; a failure comes back as ``(kind, path, message)``, which pickles between
    processes (a :class:`DataError` itself does not: its constructor takes two arguments)."""
    try:
        return func(case), None
    except DataError as e:
        return None, ("data", e.path, e.problem)
    except Exception as e:  # noqa: BLE001 (an unexpected failure of one case must not end a long run)
        logger.debug("case failed:\n%s", traceback.format_exc())
        return None, ("other", "", f"{type(e).__name__}: {e}")


def _error(failure: tuple[str, str, str] | None) -> BaseException | None:
    if failure is None:
        return None
    kind, path, message = failure
    return DataError(path, message) if kind == "data" else RuntimeError(message)


def run_cases(
    func: Callable[[T], Any], cases: Sequence[T], workers: int = 1, desc: str = "cases"
) -> Iterator[tuple[T, Any, BaseException | None]]:
    """Yield ``(case, result, error)`` for every case (``error`` is ``None`` on success).

    Args:
        func: a picklable (module-level) function of one case when ``workers > 1``.
        cases: the inputs.
        workers: worker processes (``spawn`` start method: torch and forked processes do not mix);
            ``1`` runs in this process.
        desc: progress bar label.
    """
    bar = tqdm(total=len(cases), desc=desc, unit="case", dynamic_ncols=True)
    try:
        if workers <= 1 or len(cases) <= 1:
            for case in cases:
                result, failure = _call(func, case)
                bar.update()
                yield case, result, _error(failure)
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_call, func, case): case for case in cases}
            for fut in as_completed(futures):
                result, failure = fut.result()
                bar.update()
                yield futures[fut], result, _error(failure)
    finally:
        bar.close()


def check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Raise if ``out`` holds a datalist written with other ``settings`` (kept in the datalist
    under ``"settings"``): reusing those files would silently mix two preprocessings."""
    previous = Path(out) / DATALIST_NAME
    if overwrite or not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text()).get("settings")
    except (OSError, json.JSONDecodeError):
        return
    if old is not None and old != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{out} holds data prepared with other settings ({old}); use --overwrite or another --out (now: {settings})"
        )
