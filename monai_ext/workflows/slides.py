"""Whole-slide inputs of a bundle's gigapixel overlay: the datalist check before training
(:func:`check_slide_datalist`) and the inference screen (:func:`screen_slides`). Both read headers only: a 64K px
slide is never decoded to be checked."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.common import DataError
from ..data.slide import SLIDE_SUFFIXES, TiledMask, TiledSlide
from .checks import DatasetError, load_datalist
from .inference import InputList

logger = logging.getLogger(__name__)

__all__ = ["SLIDE_SUFFIXES", "check_slide_datalist", "screen_slides"]


def _slide_problem(image: Any, label: Any | None, resolution: int | None = None) -> str | None:
    """The problem of one entry (slide opens, is at least ``resolution`` px on its longer side, mask exists with
    the slide's level-0 size), or None."""
    if not isinstance(image, str):
        return f"no slide path ({image!r})"
    try:
        with TiledSlide(image) as slide:
            level0 = slide.levels[0]
    except Exception as e:  # noqa: BLE001 - a TIFF error of any kind: reported with the file
        return str(e) if isinstance(e, ValueError) and str(e).startswith(image) else f"{image}: {e}"
    if resolution is not None and max(level0) < int(resolution):
        return (f"{image}: level 0 is {level0[0]} x {level0[1]} px, below the resolution {resolution} (leaves are "
                "never up-sampled): use a smaller --image_size")
    if label is None:
        return None
    if not isinstance(label, str) or not Path(label).is_file():
        return f"{label}: label mask missing (slide {Path(image).name})"
    try:
        with TiledMask(label) as mask:  # header only: tile sizes within the limits, one unsigned channel
            shape = mask.shape
    except Exception as e:  # noqa: BLE001 - a TIFF error of any kind: reported with the file
        return str(e) if str(e).startswith(label) else f"{label}: cannot read the mask header ({e})"
    if shape != level0:
        return f"{label}: mask size {shape} differs from level 0 of {Path(image).name} {level0}"
    return None


def check_slide_datalist(dataset_dir: str | Path, datalist: str, splits: Sequence[str] = ("training", "validation"),
                         label_key: str = "label", resolution: int | None = None,
                         max_problems: int = 20) -> dict[str, int]:
    """Check a streamed-slide datalist (``monai-ext prepare paip --resolutions 16384``) before training: every
    split has entries, every slide opens as a tiled pyramid at least ``resolution`` px on its longer side, every
    label mask exists with the slide's level-0 size (headers only). Raises :class:`DatasetError` listing the
    problems; returns the entries per split."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    for split in splits:
        items = load_datalist(dataset_dir, split, datalist)
        counts[split] = len(items)
        if not items:
            problems.append(f"{Path(dataset_dir) / datalist}: split {split!r} is empty")
        for item in items:
            if len(problems) >= max_problems:
                break
            problem = _slide_problem(item.get("image"), item.get(label_key), resolution)
            if problem:
                problems.append(problem)
    if problems:
        raise DatasetError(f"dataset {dataset_dir} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    logger.info("slides of %s ok: %s", Path(dataset_dir) / datalist, counts)
    return counts


def screen_slides(data: Sequence[Mapping[str, Any]], key: str = "image") -> InputList:
    """Keep the entries whose ``key`` slide opens as a tiled pyramid (header only); log every other one with the
    reason (``InputList.skipped``, for :class:`~monai_ext.workflows.inference.InferenceSummary`). Raises
    :class:`DataError` when none is left."""
    kept, skipped = InputList(), []
    for item in data:
        problem = _slide_problem(item.get(key), None)
        if problem:
            logger.warning("inference: skipping %s", problem)
            skipped.append({"file": str(item.get(key)), "reason": problem})
        else:
            kept.append(dict(item))
    kept.skipped = skipped
    if not kept:
        where = skipped[0]["file"] if skipped else "input_files"
        raise DataError(where, f"no usable slide: {len(skipped)} of {len(data)} skipped")
    return kept
