"""Refuse prepared data that do not match a protocol overlay (``configs/paper.yaml``), before training."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.workflows.checks import DatasetError, _spatial_shape, load_datalist
from monai_ext.workflows.slides import SLIDE_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = ["check_prepared"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(float(a), float(b)))
    return a == b


def check_prepared(dataset_dir: str | Path, datalist: str, image_size: int | Sequence[int] | None = None,
                   settings: Mapping[str, Any] | None = None, split: str = "training",
                   prepare_hint: str = "") -> str:
    """Check that ``dataset_dir/datalist`` was prepared as the overlay expects; return ``datalist``.

    ``settings``: values the preparation must have recorded under ``"settings"`` in the datalist (e.g. DUKE's
    ``spacing``, ``size``, ``out_size``, ``ap_crop``). ``image_size``: the spatial shape of the split's first
    image, read from its header (an int is a square / cube). A mismatch raises :class:`DatasetError` naming the
    datalist and both values, plus ``prepare_hint`` (the command that prepares matching data).
    """
    path = Path(dataset_dir) / datalist
    hint = f"; {prepare_hint}" if prepare_hint else ""
    if not path.is_file():
        raise DatasetError(f"{path}: datalist not found (the overlay expects data prepared for it){hint}")
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    recorded = body.get("settings") or {}
    for key, want in (settings or {}).items():
        got = recorded.get(key)
        if not _same(got, want):
            raise DatasetError(f"{path}: data prepared with {key}={got!r}, the overlay expects {key}={want!r}{hint}")
    if image_size is not None:
        items = load_datalist(dataset_dir, split, datalist)
        if not items:
            raise DatasetError(f"{path}: split {split!r} is empty{hint}")
        image = Path(items[0]["image"])
        recorded_res = body.get("resolution")
        if image.name.lower().endswith(SLIDE_SUFFIXES) and isinstance(image_size, int) and recorded_res is not None:
            # a streamed-slide datalist (gigapixel overlay): the slide is read at the recorded resolution
            if int(recorded_res) != int(image_size):
                raise DatasetError(f"{path}: slides listed for resolution {recorded_res}, the overlay expects "
                                   f"{image_size}; not resized silently{hint}")
            logger.info("%s: streamed slides at resolution %s match the overlay", path, recorded_res)
            return datalist
        try:
            shape = tuple(int(s) for s in _spatial_shape(image))
        except FileNotFoundError:
            raise DatasetError(f"{image}: image file missing (listed in {path})") from None
        want_shape = (tuple(int(s) for s in image_size) if isinstance(image_size, (list, tuple))
                      else (int(image_size),) * len(shape))
        if shape != want_shape:
            raise DatasetError(f"{path}: images are {'x'.join(map(str, shape))} ({image.name}), the overlay expects "
                               f"{'x'.join(map(str, want_shape))}; not resized silently{hint}")
    logger.info("%s: prepared data match the overlay (%s)", path,
                ", ".join(f"{k}={v}" for k, v in {**(settings or {}), "image_size": image_size}.items()))
    return datalist
