"""Inference inputs and outputs the bundles' ``inference.yaml`` use.

- :func:`screen_inputs`: before the run, each input is read once as the bundle will read it; an unreadable
  file, one with the wrong number of spatial dimensions or with channels that cannot be converted is skipped
  with its name and the reason in the log (the others are still processed), instead of ending the run
  half-way with a traceback that names no file.
- :class:`MatchChannelsd`: converts what can be converted (RGBA -> RGB, grey -> RGB, RGB -> grey).
- :class:`InferenceSummary`: at the end, one summary line (written / skipped) and ``skipped.json`` in the
  output folder; optionally each predicted mask also as a viewable 8-bit PNG (classes spread over 0..255:
  a 0/1 mask looks black in any image viewer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from monai_ext.data.common import DataError

logger = logging.getLogger(__name__)

__all__ = ["InferenceSummary", "InputList", "MatchChannelsd", "match_channels", "screen_inputs"]

#: ITU-R 601-2 luma weights (PIL's ``convert("L")``)
LUMA = (0.299, 0.587, 0.114)


def _source(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    fn = meta.get("filename_or_obj", "")
    return str(fn[0] if isinstance(fn, (list, tuple)) and fn else fn) or "<input>"


def match_channels(img: Any, channels: int) -> Any:
    """A channel-first image with ``channels`` channels: RGBA / grey+alpha lose the alpha channel (as PIL's
    ``convert("RGB")`` does), grey is repeated to RGB, RGB becomes grey by ITU-R 601-2 luma. Anything else
    raises :class:`DataError` naming the file."""
    c = int(img.shape[0])
    if c == channels:
        return img
    if c in (2, 4):  # grey + alpha, RGBA: drop the alpha channel
        img, c = img[: c - 1], c - 1
        if c == channels:
            return img
    if c == 1 and channels == 3:
        return torch.cat([img] * 3, dim=0) if isinstance(img, torch.Tensor) else np.concatenate([img] * 3, axis=0)
    if c == 3 and channels == 1:
        w = LUMA
        return img[0:1] * w[0] + img[1:2] * w[1] + img[2:3] * w[2]
    raise DataError(_source(img), f"{int(c)} channel(s) cannot be converted to the {channels} the network takes")


class MatchChannelsd(MapTransform):
    """Dictionary version of :func:`match_channels` (after ``EnsureChannelFirstd``)."""

    def __init__(self, keys: Any, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = match_channels(d[key], self.channels)
        return d


class InputList(list):
    """The usable inputs (a list of datalist entries) with ``skipped``: ``[{"file", "reason"}]``."""

    skipped: list[dict[str, str]]


def _check_header(name: str) -> None:
    """Size limits from the header before decoding (:mod:`monai_ext.data.limits`; float32 arrays)."""
    from monai_ext.data import limits

    low = name.lower()
    if low.endswith((".nii", ".nii.gz")):
        limits.check_nifti_header(name, out_itemsize=4)
    elif low.endswith((".png", ".jpg", ".jpeg")):
        limits.check_image_header(name, out_itemsize=4)


def screen_inputs(data: Sequence[Mapping[str, Any]], channels: int, spatial_dims: int, key: str = "image") -> InputList:
    """Keep the entries whose ``key`` file loads (MONAI ``LoadImage``, as the bundle reads it) with
    ``spatial_dims`` spatial dimensions and channels :func:`match_channels` can convert to ``channels``; log
    every other one with the reason (``InputList.skipped``). Raises :class:`DataError` when none is left.

    Costs one extra read of every input."""
    from monai.transforms import EnsureChannelFirst, LoadImage

    load, first = LoadImage(image_only=True), EnsureChannelFirst()
    kept, skipped = InputList(), []
    for item in data:
        name = str(item.get(key, "<no file>"))
        try:
            if key not in item:
                raise ValueError(f"no {key!r} in the entry {dict(item)}")
            _check_header(name)
            img = first(load(name))
            if img.ndim - 1 != spatial_dims:
                raise ValueError(f"{img.ndim - 1} spatial dimension(s) (shape {tuple(img.shape)}), expected "
                                 f"{spatial_dims}")
            if int(img.shape[0]) != channels:
                match_channels(img, channels)  # raises unless convertible
                logger.info("inference: %s has %d channel(s); converted to %d", name, int(img.shape[0]), channels)
        except Exception as e:  # noqa: BLE001 -- any reader error: skip this input, keep the others
            reason = e.problem if isinstance(e, DataError) else f"{type(e).__name__}: {e}".splitlines()[0]
            logger.warning("inference: skipping %s: %s", name, reason)
            skipped.append({"file": name, "reason": reason})
            continue
        kept.append(dict(item))
    kept.skipped = skipped
    if not kept:
        where = skipped[0]["file"] if skipped else "input_files"
        raise DataError(where, f"no usable input: {len(skipped)} of {len(data)} skipped"
                        + (f" ({'; '.join(s['file'] + ': ' + s['reason'] for s in skipped[:3])})" if skipped else ""))
    return kept


class InferenceSummary:
    """Ignite handler: a summary line at the end (inputs processed, skipped ones with reasons), ``skipped.json``
    in ``output_dir``; with ``view_postfix``, every predicted class map also as ``<name>_<view_postfix>.png``
    with classes spread over 0..255 (2D predictions only).

    Args:
        output_dir: where the predictions are written.
        skipped: the ``skipped`` list of :func:`screen_inputs` (``"$@data.skipped"``).
        view_postfix: write viewable PNGs with this postfix (``None``: none).
        num_classes: classes of the class map (sets the grey levels of the viewable PNG).
        pred_key: key of the class map in the engine output (after ``AsDiscreted(argmax=True)``).
    """

    def __init__(self, output_dir: str | Path, skipped: Sequence[Mapping[str, str]] | None = None,
                 view_postfix: str | None = None, num_classes: int = 2, pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.skipped = [dict(s) for s in (skipped or [])]
        self.view_postfix = view_postfix
        self.num_classes = int(num_classes)
        self.pred_key = pred_key
        self.count = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self.count = 0

    def _iteration(self, engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, (list, tuple)) else [out]
        for item in items:
            self.count += 1
            if self.view_postfix and isinstance(item, Mapping) and self.pred_key in item:
                self._write_view(item[self.pred_key])

    def _write_view(self, pred: Any) -> None:
        from PIL import Image

        arr = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
        arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
        if arr.ndim != 2:
            return
        scale = 255 // max(self.num_classes - 1, 1)
        view = np.clip(np.rint(arr) * scale, 0, 255).astype(np.uint8).T  # MONAI's PNG arrays are (W, H)
        stem = Path(_source(pred)).stem
        self.output_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(view).save(self.output_dir / f"{stem}_{self.view_postfix}.png")

    def _completed(self, engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "skipped.json").write_text(json.dumps(self.skipped, indent=2) + "\n")
        if self.skipped:
            listed = "; ".join(f"{s['file']} ({s['reason']})" for s in self.skipped)
            logger.warning("inference: %d input(s) processed into %s, %d skipped: %s", self.count, self.output_dir,
                           len(self.skipped), listed)
        else:
            logger.info("inference: %d input(s) processed into %s, none skipped", self.count, self.output_dir)
