"""The second operating point of a classification report: a threshold given (number or JSON file), or Youden's
threshold chosen on the validation split by running the evaluator's network on it.

The validation pass reuses everything the test evaluator was built with (network with the checkpoint already
loaded, inferer, batch preparation, transforms, DDP sharding) plus the evaluator's ``postprocessing``: one
command, no file passed between runs, test data kept out of threshold selection.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .distributed import gather_records, is_sharded

logger = logging.getLogger(__name__)

__all__ = ["load_threshold", "validation_records"]


def load_threshold(threshold: float | str | os.PathLike | None) -> tuple[float | None, str | None]:
    """``(threshold, source)`` from a number, a JSON file with ``"threshold"`` or a previous ``metrics.json``
    (``threshold_selection.threshold``); ``(None, None)`` for ``None``."""
    if threshold is None:
        return None, None
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return float(threshold), "threshold argument"
    path = Path(threshold)
    if not path.is_file():
        raise FileNotFoundError(f"threshold file {path} not found")
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"threshold file {path}: not valid JSON ({e})") from None
    for getter in (lambda b: b["threshold"], lambda b: b["threshold_selection"]["threshold"]):
        try:
            return float(getter(body)), str(path)
        except (KeyError, TypeError, ValueError):
            continue
    raise ValueError(f"threshold file {path}: needs a number under 'threshold' (or a metrics.json with "
                     f"threshold_selection.threshold)")


def validation_records(engine: Any, data: Sequence[Mapping[str, Any]], postprocessing: Any,
                       record_of: Callable[[Mapping[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``engine``'s network on ``data`` (datalist entries) with ``engine``'s transforms, inferer, batch
    preparation and sharding, and ``postprocessing``; ``record_of(item)`` gives each case's record. Returns the
    records of all ranks (collective in DDP)."""
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset, DistributedSampler, decollate_batch
    from monai.engines import SupervisedEvaluator

    test_loader = engine.data_loader
    dataset = Dataset(data=list(data), transform=getattr(test_loader.dataset, "transform", None))
    sampler = DistributedSampler(dataset, shuffle=False, even_divisible=False) if is_sharded(test_loader) else None
    loader = DataLoader(dataset, batch_size=test_loader.batch_size or 1, shuffle=False, sampler=sampler,
                        num_workers=test_loader.num_workers, collate_fn=test_loader.collate_fn)
    evaluator = SupervisedEvaluator(
        device=engine.state.device, val_data_loader=loader, network=engine.network, inferer=engine.inferer,
        prepare_batch=engine.prepare_batch, postprocessing=postprocessing, amp=engine.amp,
        non_blocking=engine.non_blocking)
    records: list[dict[str, Any]] = []

    def collect(e: Any) -> None:
        out = e.state.output
        for item in (decollate_batch(out) if isinstance(out, Mapping) else out):
            records.append(record_of(item))

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
    logger.info("running the network on %d validation case(s) to choose the Youden threshold", len(dataset))
    evaluator.run()
    return gather_records(records, loader, "validation")
