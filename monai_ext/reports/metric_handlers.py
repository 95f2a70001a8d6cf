"""Metric handlers the evaluation configs need beyond MONAI's own.

:class:`SpacedHausdorffDistance` is MONAI's ``HausdorffDistance`` handler with the voxel spacing passed to the
metric (MONAI's handler calls ``HausdorffDistanceMetric`` without ``spacing``, i.e. in voxels, although the
metric supports it): the spacing of every case comes from its label's (or prediction's) affine, so the value in
``metrics.csv``, ``hd95_raw.csv`` (``MetricsSaver``) and ``metrics.json`` (:class:`~monai_ext.reports.
EvaluationReport`, which reads ``engine.state.metric_details``) is the same number in the same unit. The unit is
recorded in ``engine.state.metric_units[name]`` for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import HausdorffDistance

__all__ = ["SpacedHausdorffDistance", "spacing_of"]


def spacing_of(tensor: Any, spatial_dims: int) -> list[float] | None:
    """Voxel spacing (length of each of the first ``spatial_dims`` affine columns) of a MetaTensor; ``None``
    when it has no affine."""
    aff = getattr(tensor, "affine", None)
    if aff is None:
        return None
    a = torch.as_tensor(aff).double().cpu().numpy()
    return [float(v) for v in np.sqrt((a[:spatial_dims, :spatial_dims] ** 2).sum(axis=0))]


class SpacedHausdorffDistance(HausdorffDistance):
    """MONAI's ``HausdorffDistance`` handler (same arguments) computing in physical units.

    Args:
        spacing: ``"affine"`` (default): each case's spacing from its label's affine (prediction's if the label
            has none), i.e. mm for NIfTI / DICOM; a sequence of numbers: that spacing for every case; ``None``:
            voxel units, as MONAI's handler.
        unit: the unit written to ``engine.state.metric_units`` (default ``"mm"``; ``"voxel"`` when ``spacing``
            is ``None``).
        kwargs: MONAI's ``HausdorffDistance`` arguments (``include_background``, ``percentile``, ...).
    """

    def __init__(self, spacing: str | Sequence[float] | None = "affine", unit: str | None = None,
                 include_background: bool = False, distance_metric: str = "euclidean", percentile: float | None = None,
                 directed: bool = False, reduction: str = "mean", output_transform: Callable = lambda x: x,
                 save_details: bool = True) -> None:
        if isinstance(spacing, str) and spacing != "affine":
            raise ValueError(f"spacing must be None, 'affine' or a sequence of numbers, got {spacing!r}")
        super().__init__(include_background=include_background, distance_metric=distance_metric,
                         percentile=percentile, directed=directed, reduction=reduction,
                         output_transform=output_transform, save_details=save_details)
        self.spacing = spacing if spacing is None or isinstance(spacing, str) else [float(s) for s in spacing]
        self.unit = unit or ("voxel" if spacing is None else "mm")

    def _spacings(self, y_pred: Any, y: Any) -> list[list[float]] | None:
        preds = list(y_pred) if isinstance(y_pred, (list, tuple)) else [y_pred[i] for i in range(len(y_pred))]
        labels = list(y) if isinstance(y, (list, tuple)) else [y[i] for i in range(len(y))]
        out = []
        for p, lab in zip(preds, labels, strict=True):
            spatial = p.ndim - 1  # channel-first items
            s = spacing_of(lab, spatial) or spacing_of(p, spatial)
            if s is None:
                raise ValueError("SpacedHausdorffDistance(spacing='affine'): the label and prediction carry no affine "
                                 "(MetaTensor); give the spacing or spacing=None for voxel units")
            out.append(s)
        return out

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2, got {len(output)}.")
        y_pred, y = output
        if self.spacing is None:
            self.metric_fn(y_pred, y)
        elif self.spacing == "affine":
            spacings = self._spacings(y_pred, y)
            if isinstance(y_pred, (list, tuple)):  # one call per case: MONAI applies one spacing to a list
                for p, t, s in zip(y_pred, y, spacings, strict=True):
                    self.metric_fn([p], [t], spacing=s)
            else:
                self.metric_fn(y_pred, y, spacing=spacings)
        else:
            self.metric_fn(y_pred, y, spacing=self.spacing)

    def attach(self, engine: Any, name: str) -> None:  # type: ignore[override]
        super().attach(engine, name)
        if not hasattr(engine.state, "metric_units"):
            engine.state.metric_units = {}
        engine.state.metric_units[name] = self.unit
