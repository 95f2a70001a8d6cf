"""``SegmentationOverlays``: an Ignite / MONAI handler keeping overlay pictures of the first evaluated cases for
the report: image, ground truth and prediction (the axial slice with the most ground-truth foreground for a
volume), with the APF quadtree leaves when ``apf`` is given.

It stores them in ``engine.state.report_overlays`` (a list of the dicts
:func:`monai_ext.reports.writer.write_report` draws); :class:`~monai_ext.reports.EvaluationReport` reads that
list. Titles carry the case's mean Dice from ``engine.state.metric_details[dice_key]`` (the evaluator's own
Dice, filled at ``EPOCH_COMPLETED``); in DDP the overlays come from the cases rank 0 evaluated (rank 0's rows
come first in the gathered details).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .cases import case_id_of

__all__ = ["SegmentationOverlays"]


class SegmentationOverlays:
    """Keep overlays of the first ``num_overlays`` cases (segmentation, one-hot ``pred`` / ``label``).

    Args:
        num_overlays: how many cases.
        max_display_size: larger images are down-sampled to about this side.
        apf: the bundle's APF parameters (``@apf``): the quadtree leaves are drawn.
        dice_key: metric details holding the per-case Dice (title); left out of the title when absent.
        image_key, label_key, pred_key: keys of the engine output.
    """

    def __init__(self, num_overlays: int = 4, max_display_size: int = 768, apf: Mapping[str, Any] | None = None,
                 dice_key: str = "mean_dice", image_key: str = "image", label_key: str = "label",
                 pred_key: str = "pred") -> None:
        self.num_overlays = int(num_overlays)
        self.max_display_size = int(max_display_size)
        self.apf = dict(apf) if apf else None
        self.dice_key = dice_key
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self._kept: list[tuple[int, dict[str, Any]]] = []
        self._seen = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, engine: Any) -> None:
        self._kept, self._seen = [], 0
        engine.state.report_overlays = []

    def _collect(self, engine: Any) -> None:
        from monai.data import decollate_batch

        out = engine.state.output
        for item in (decollate_batch(out) if isinstance(out, Mapping) else out):
            if len(self._kept) < self.num_overlays and item.get(self.image_key) is not None:
                overlay = self._overlay(item)
                if overlay is not None:
                    self._kept.append((self._seen, overlay))
            self._seen += 1

    def _overlay(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        pred, label = torch.as_tensor(item[self.pred_key]).detach(), torch.as_tensor(item[self.label_key]).detach()
        if label.shape[0] == 1 and pred.shape[0] > 1:  # class-index label
            lab_map = label[0].long().cpu().numpy()
        else:
            lab_map = torch.argmax(label, dim=0).cpu().numpy()
        pred_map = torch.argmax(pred, dim=0).cpu().numpy()
        img = torch.as_tensor(item[self.image_key]).detach().float().cpu().numpy()
        where = ""
        spatial = pred.ndim - 1
        if spatial == 3:  # the axial slice with the most ground-truth foreground
            fg = (lab_map > 0).reshape(-1, lab_map.shape[-1]).sum(axis=0)
            z = int(np.argmax(fg)) if fg.max() > 0 else lab_map.shape[-1] // 2
            img, lab_map, pred_map = img[..., z], lab_map[..., z], pred_map[..., z]
            where = f", slice {z}"
        elif spatial != 2:
            return None
        leaves = None
        if self.apf is not None:
            from ..transforms import plan_quadtree

            leaves = plan_quadtree(img, **self.apf)["leaves"]
        step = max(1, math.ceil(max(img.shape[-2:]) / self.max_display_size))
        cid = next((c for c in (case_id_of(item.get(k)) for k in (self.image_key, self.pred_key, self.label_key))
                    if c is not None), f"case{self._seen:05d}")
        return {"image": img[:, ::step, ::step], "label": lab_map[::step, ::step], "pred": pred_map[::step, ::step],
                "leaves": leaves, "scale": 1.0 / step, "case_id": cid, "where": where,
                "caption": f"Case {cid}{where}: image, ground truth, prediction"
                           + (", APF quadtree leaves" if leaves is not None else "")
                           + (f" (display down-sampled {step}x)" if step > 1 else "")}

    def _completed(self, engine: Any) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        dice = details.get(self.dice_key)
        rows = torch.as_tensor(dice).detach().cpu().double().numpy() if dice is not None else None
        overlays = []
        for index, ov in self._kept:
            title = f"{ov['case_id']}{ov['where']}"
            if rows is not None and index < len(rows):
                d = np.asarray(rows[index]).reshape(-1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = float(np.nanmean(d)) if np.any(~np.isnan(d)) else float("nan")
                title += f": mean Dice {mean:.3f}"
            overlays.append({**ov, "title": title})
        engine.state.report_overlays = overlays
