"""``EvaluationReport``: an Ignite / MONAI handler that turns an evaluator run into a reproducible evaluation
folder (see :mod:`monai_ext.reports.writer` for its contents), in the manner of MONAI's ``MetricsSaver``: it
computes no metric of its own but reads what the evaluator already computed.

- segmentation: the per-case Dice and HD95 in ``engine.state.metric_details`` (MONAI metric handlers with
  ``save_details=True``: ``MeanDice``; :class:`~monai_ext.reports.SpacedHausdorffDistance` for HD95 in mm),
  their unit from ``engine.state.metric_units``, the overlays :class:`~monai_ext.reports.SegmentationOverlays`
  left in ``engine.state.report_overlays``; from each post-processed case only its id, number of 2D images and
  (with ``apf``) APF leaves;
- classification: each case's post-processed probability and label (read once per case); the second operating
  point from a given threshold or Youden's threshold on the validation split (:mod:`~monai_ext.reports.threshold`);
- multiclass (three or more classes): each case's class probabilities and label; top-1 / top-k accuracy, balanced
  accuracy, macro AUROC, per-class table, confusion matrix and gradient saliency maps of the first
  ``saliency_per_class`` evaluated images of every class (:mod:`~monai_ext.reports.multiclass`).

Attach it in ``evaluate.yaml``'s ``validate#handlers`` after the metric handlers' consumers, e.g.::

    - _target_: monai_ext.reports.EvaluationReport
      output_dir: "@output_dir"
      task: classification
      class_names: [no cardiomegaly, cardiomegaly]
      name: vindr_cxr_cardiomegaly_classification
      variant: {attention: "@network_def#attention", image_size: "@image_size", preset: "@preset"}
      ckpt_path: "$@ckpt_dir + '/model.pt'"
      datalist_path: "$os.path.join(@dataset_dir, @datalist)"
      seed: "@seed"
      validation_data: "$monai_ext.workflows.load_datalist(@dataset_dir, 'validation', @datalist)"
      postprocessing: "@validate#postprocessing"

The checkpoint is checked against the network before the run by
:func:`monai_ext.utils.checkpoint.check_checkpoint` (the configs' ``initialize``); the report only hashes it.
In DDP (loader sharded by MONAI's ``DistributedSampler(even_divisible=False)``) every rank runs this handler
(it gathers the per-case records; it is not one of ``rank_zero_handlers``' reporting handlers) and rank 0
writes. Cases are sorted by id before any statistic, so ``metrics.json`` does not depend on batch size, case
order or the number of ranks.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cases import case_id_of, classification_record, mean_leaves, scored_class_names, segmentation_records
from .checkpoint import check_checkpoint
from .distributed import gather_records, world
from .multiclass import multiclass_record, saliency_items
from .provenance import resolve_config
from .run_record import evaluation_provenance
from .threshold import load_threshold, validation_records
from .writer import write_report

logger = logging.getLogger(__name__)

__all__ = ["EvaluationReport"]


class EvaluationReport:
    """Collect per-case results during an evaluator run and write the evaluation report at ``COMPLETED``.

    Args:
        output_dir: folder to write (created).
        task: ``"classification"`` (binary), ``"multiclass"`` or ``"segmentation"``.
        class_names: classification: ``[negative, positive]``; multiclass: one per class; segmentation: all output
            channels (background first) or the scored ones only.
        positive_index: channel of ``pred`` holding the positive-class probability (classification).
        name: run / bundle name shown in the report and used by ``monai-ext report compare``.
        variant: resolved settings that identify the variant (e.g. ``{"attention": "@network_def#attention"}``);
            recorded in ``provenance.json`` and used by ``compare``.
        split: name of the evaluated split (for the report).
        ckpt_path, datalist_path: the evaluated checkpoint and the datalist (hashed into ``provenance.json``).
        config: the resolved config to hash and save as ``config.json``: ``None`` finds the running bundle's
            parser (``python -m monai.bundle run``), or a dict, a ``ConfigParser``, a file or a list of files.
        seed, n_bootstrap, ci_level: bootstrap settings.
        validation_data: datalist entries of the validation split (classification): the evaluator's network runs
            on them with its settings and ``postprocessing``, and the Youden threshold is chosen there.
        postprocessing: the evaluator's post-processing (needed with ``validation_data``).
        threshold: instead of ``validation_data``: a second threshold, or a JSON file holding it.
        dice_key, hd95_key: names of the evaluator's metrics whose details hold per-case Dice / HD95
            (segmentation; HD95 is optional).
        apf: APF parameters (the bundle's ``@apf``): the quadtree of every evaluated 2D image (each axial slice
            of a volume) is planned to count its leaves.
        saliency_per_class: multiclass: images of each true class kept for the saliency figure (2D; 0: none);
            kept on rank 0 in DDP.
        image_key, label_key, pred_key: keys of the engine output.
        network, ckpt_key: deprecated: with ``ckpt_path``, the checkpoint is checked against ``network`` at attach
            (:func:`~monai_ext.reports.check_checkpoint`; the bundles call it in ``initialize``). Arguments of the
            former handler that computed metrics itself (``hd95_spacing``, ``num_overlays``, ...) raise a
            ``TypeError`` saying where they went.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        task: str = "classification",
        class_names: Sequence[str] | None = None,
        positive_index: int = 1,
        name: str | None = None,
        variant: Mapping[str, Any] | None = None,
        split: str = "test",
        ckpt_path: str | os.PathLike | None = None,
        datalist_path: str | os.PathLike | None = None,
        config: Any = None,
        seed: int = 0,
        n_bootstrap: int = 1000,
        ci_level: float = 0.95,
        validation_data: Sequence[Mapping[str, Any]] | None = None,
        postprocessing: Any = None,
        threshold: float | str | os.PathLike | None = None,
        dice_key: str = "mean_dice",
        hd95_key: str = "hd95",
        apf: Mapping[str, Any] | None = None,
        saliency_per_class: int = 1,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        network: Any = None,
        ckpt_key: str | None = "model",
        **removed: Any,
    ) -> None:
        if removed:
            raise TypeError(f"EvaluationReport no longer takes {sorted(removed)}: it reads the evaluator's metric "
                            f"details; HD95 units are set on the metric (monai_ext.reports.SpacedHausdorffDistance), "
                            f"overlays by monai_ext.reports.SegmentationOverlays (see docs/reports.md)")
        if task not in ("classification", "multiclass", "segmentation"):
            raise ValueError(f"task must be 'classification', 'multiclass' or 'segmentation', got {task!r}")
        if int(saliency_per_class) < 0:
            raise ValueError(f"saliency_per_class must be >= 0, got {saliency_per_class}")
        if validation_data is not None and threshold is not None:
            raise ValueError("give validation_data (Youden threshold chosen on it) or threshold, not both")
        if validation_data is not None and postprocessing is None:
            raise ValueError("validation_data needs the evaluator's postprocessing (e.g. '@validate#postprocessing')")
        if validation_data is not None and task != "classification":
            raise ValueError("validation_data (threshold selection) is for classification only")
        if not 0 < ci_level < 1:
            raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
        if int(n_bootstrap) < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
        self.output_dir = Path(output_dir)
        self.task = task
        self.class_names = list(class_names) if class_names is not None else None
        self.positive_index = int(positive_index)
        self.name = name
        self.variant = dict(variant) if variant else {}
        self.split = split
        self.ckpt_path = ckpt_path
        self.datalist_path = datalist_path
        self.config = config
        self.seed = int(seed)
        self.n_bootstrap = int(n_bootstrap)
        self.ci_level = float(ci_level)
        self.validation_data = list(validation_data) if validation_data is not None else None
        self.postprocessing = postprocessing
        self.threshold, self.threshold_source = load_threshold(threshold)
        self.dice_key, self.hd95_key = dice_key, hd95_key
        self.apf = dict(apf) if apf else None
        self.saliency_per_class = int(saliency_per_class)
        self._kept: list[dict[str, Any]] = []
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        # deprecated (configs written before the checkpoint check moved to ``initialize``): still checked at attach
        self._legacy_check = (network, ckpt_key) if network is not None and ckpt_path is not None else None
        if self._legacy_check is not None:
            warnings.warn("EvaluationReport(network=...) is deprecated: call monai_ext.reports.check_checkpoint in the "
                          "config's initialize instead", DeprecationWarning, stacklevel=2)
        self.records: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] | None = None
        self._t0 = 0.0

    # ------------------------------------------------------------------ attach / events
    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        try:
            n = len(dataset) if dataset is not None else None
        except TypeError:
            n = None
        if n == 0:
            where = f"{self.datalist_path}, " if self.datalist_path else ""
            where = f" ({where}split {self.split!r})"
            raise ValueError(f"the evaluation split is empty{where}: nothing to evaluate")
        if self._legacy_check is not None:
            check_checkpoint(self.ckpt_path, *self._legacy_check)
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Any) -> None:
        self.records = []
        self._kept = []
        self._t0 = time.perf_counter()

    def _case_id(self, item: Mapping[str, Any]) -> str:
        for key in (self.image_key, self.pred_key, self.label_key):
            cid = case_id_of(item.get(key))
            if cid is not None:
                return cid
        return f"rank{world()[0]}_case{len(self.records):05d}"

    def _record(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """One case: classification -> label and probability; segmentation -> number of 2D images (and APF
        leaves); the Dice / HD95 rows are joined at the end from the metric details."""
        if self.task == "classification":
            rec = classification_record(item, self.pred_key, self.label_key, self.positive_index)
        elif self.task == "multiclass":
            rec = multiclass_record(item, self.pred_key, self.label_key)
        else:
            pred = item[self.pred_key]
            spatial = pred.ndim - 1
            rec = {"num_images": int(pred.shape[-1]) if spatial == 3 else 1}
            image = item.get(self.image_key)
            if self.apf is not None and image is not None:
                rec["num_leaves"] = mean_leaves(image, spatial, self.apf)
        rec["case_id"] = self._case_id(item)
        return rec

    def _collect(self, engine: Any) -> None:
        from monai.data import decollate_batch

        out = engine.state.output
        for item in (decollate_batch(out) if isinstance(out, Mapping) else out):
            rec = self._record(item)
            self.records.append(rec)
            if self.task == "multiclass" and item.get(self.image_key) is not None and \
                    sum(k["label"] == rec["label"] for k in self._kept) < self.saliency_per_class:
                self._kept.append({"image": item[self.image_key].detach().cpu(), "label": rec["label"],
                                   "case_id": rec["case_id"]})

    # ------------------------------------------------------------------ end of run
    def _segmentation(self, engine: Any, cases: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], str]:
        details = getattr(engine.state, "metric_details", None) or {}
        if self.dice_key not in details:
            raise KeyError(f"the evaluator has no per-case details of metric {self.dice_key!r} (has "
                           f"{sorted(details)}): add a MeanDice metric named {self.dice_key!r} with save_details=True")
        records = segmentation_records(cases, details[self.dice_key], details.get(self.hd95_key),
                                       self.dice_key, self.hd95_key)
        names = scored_class_names(self.class_names, len(records[0]["dice"])) if records else []
        unit = (getattr(engine.state, "metric_units", None) or {}).get(self.hd95_key, "voxel")
        return records, names, unit

    def _completed(self, engine: Any) -> None:
        t_test = time.perf_counter() - self._t0
        records = gather_records(self.records, engine.data_loader, self.split)
        validation, t_val = None, None
        if self.validation_data is not None:
            t1 = time.perf_counter()
            validation = validation_records(engine, self.validation_data, self.postprocessing, self._record)
            t_val = time.perf_counter() - t1
        rank, size = world()
        if rank != 0:
            return
        if not records:
            raise ValueError(f"no cases were evaluated in split {self.split!r}: nothing to report")
        names, hd_unit = self.class_names, "voxel"
        saliency = None
        if self.task == "segmentation":
            records, names, hd_unit = self._segmentation(engine, records)
        elif self.task == "multiclass":
            k = len(records[0]["probabilities"])
            names = names or [f"class_{c}" for c in range(k)]
            if len(names) != k:
                raise ValueError(f"class_names has {len(names)} names but '{self.pred_key}' has {k} classes")
            kept = sorted(self._kept, key=lambda r: (r["label"], r["case_id"]))
            saliency = saliency_items(engine.network, kept, names) if kept else None
        cfg, cfg_source = resolve_config(self.config)
        n_cases = len(records)
        n_images = sum(int(r.get("num_images", 1) or 1) for r in records)
        timing = {"evaluation_s": t_test, "seconds_per_case": t_test / n_cases, "seconds_per_image": t_test / n_images}
        if t_val is not None:
            timing["threshold_selection_s"] = t_val  # the network on the validation split
        run = {"name": self.name, "task": self.task, "split": self.split, "variant": self.variant,
               "n_cases": n_cases, "n_images": n_images,
               "n_validation_cases": len(validation) if validation is not None else None}
        if self.apf is not None:
            run["apf"] = self.apf
        prov = evaluation_provenance(run, engine.state.device, size, self.seed, cfg, cfg_source, self.ckpt_path,
                                     self.datalist_path, timing)
        self.metrics = write_report(
            self.output_dir, self.task, records, prov, class_names=names, validation_records=validation,
            threshold=self.threshold, threshold_source=self.threshold_source, n_bootstrap=self.n_bootstrap,
            seed=self.seed, ci_level=self.ci_level, hd95_unit=hd_unit, apf=self.apf,
            overlays=getattr(engine.state, "report_overlays", None) or (), config=cfg, saliency=saliency)
