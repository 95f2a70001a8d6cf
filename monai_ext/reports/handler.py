"""``EvaluationReport``: an Ignite / MONAI handler that turns an evaluator run into a reproducible
evaluation folder (see :mod:`monai_ext.reports.writer` for its contents).

Attach it in ``evaluate.yaml``'s ``validate#handlers`` (after ``CheckpointLoader``)::

    - _target_: monai_ext.reports.EvaluationReport
      output_dir: "@output_dir"
      task: classification
      class_names: [no cardiomegaly, cardiomegaly]
      name: vindr_cxr_cardiomegaly_classification
      variant: {attention: "@network_def#attention", image_size: "@image_size", preset: "@preset"}
      ckpt_path: "$@ckpt_dir + '/model.pt'"
      network: "@network_def"
      datalist_path: "$os.path.join(@dataset_dir, @datalist)"
      seed: "@seed"
      # Youden threshold chosen on the validation split: the handler runs the network on it
      validation_data: "$monai_ext.workflows.load_datalist(@dataset_dir, 'validation', @datalist)"
      postprocessing: "@validate#postprocessing"

During the run it collects, per case, the probability of the positive class and the label
(classification) or per-class Dice and HD95 computed with MONAI's ``DiceMetric`` /
``HausdorffDistanceMetric`` on the post-processed one-hot ``pred`` / ``label`` (segmentation), with the
case id from the image's ``filename_or_obj``. At ``COMPLETED`` it

1. runs the same network, inferer, batch preparation and ``postprocessing`` on ``validation_data``
   (if given; classification only) to choose the Youden threshold there -- the simplest design that
   keeps test data out of threshold selection: one command, the checkpoint already loaded, no file to
   pass between runs. Alternatively ``threshold`` gives the second threshold (a number or a JSON file
   with a ``"threshold"`` key or a previous ``metrics.json``);
2. in DDP (``torch.distributed`` initialised), gathers every rank's per-case records with
   ``all_gather_object`` when the loader is sharded by a ``DistributedSampler`` (it must not pad: use
   MONAI's ``DistributedSampler(even_divisible=False)``; a count different from the dataset length is
   an error). Every rank must therefore run this handler (it is not one of
   ``monai_ext.workflows.rank_zero_handlers``' reporting handlers); only rank 0 writes;
3. sorts cases by id and writes the folder. ``metrics.json`` does not depend on batch size, case order
   or the number of ranks (checked: 1 process and 2 DDP processes give the same bytes). Overlays come
   from the first cases rank 0 evaluated. As with MONAI's own metric handlers, every rank needs at least
   one case (a rank with an empty shard never reaches ``COMPLETED`` and the gather would wait).

Before the run (at ``attach``), it fails with a clear message when the evaluation split is empty or the
checkpoint does not fit the network (missing / unexpected keys, shape mismatches).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the package's one checkpoint loader (weights only); CheckpointMismatchError is re-exported from here
from monai_ext.utils.checkpoint import (CheckpointError, CheckpointMismatchError, compare_state_dict,
                                        load_checkpoint, state_dict_of)
from monai_ext.utils.checkpoint import unwrap as _unwrap

from .provenance import (command_line, device_info, file_record, git_info, package_versions, resolve_config,
                         sha256_json)
from .writer import write_report

logger = logging.getLogger(__name__)

__all__ = ["EvaluationReport", "check_checkpoint", "case_id_of", "CheckpointMismatchError"]

_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".npy", ".npz",
             ".nrrd", ".mha", ".mhd", ".svs")



def case_id_of(meta_source: Any) -> str | None:
    """Case id from a MetaTensor's (or meta dict's) ``filename_or_obj``: the file name without its
    image suffix; ``None`` when unknown."""
    meta = getattr(meta_source, "meta", meta_source)
    if not isinstance(meta, Mapping):
        return None
    fn = meta.get("filename_or_obj")
    if isinstance(fn, (list, tuple)):
        fn = fn[0] if fn else None
    if fn is None or fn == "":
        return None
    name = Path(str(fn)).name
    low = name.lower()
    for suf in _SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def check_checkpoint(path: str | os.PathLike, network: torch.nn.Module, key: str | None = "model",
                     max_listed: int = 5) -> None:
    """Raise a clear error unless the checkpoint at ``path`` loads into ``network`` with ``strict=True``.

    The checkpoint is either the network's state dict (MONAI ``CheckpointSaver`` with one object) or a
    dict holding it under ``key`` (several objects, e.g. ``{"network": ..., "optimizer": ...}``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found: train the bundle first or point ckpt_dir / "
                                f"ckpt_path at the trained model")
    try:
        # weights_only=True, never a fallback: a checkpoint is untrusted input (docs/security.md)
        state = state_dict_of(load_checkpoint(p), p, keys=(key,) if key else (),
                              strip_prefixes=False)  # MONAI's CheckpointLoader does not strip prefixes either
    except CheckpointMismatchError:
        raise
    except CheckpointError as e:
        raise CheckpointMismatchError(str(e)) from None
    net = _unwrap(network)
    diff = compare_state_dict(state, net.state_dict())
    missing, unexpected, shapes = diff.missing, diff.unexpected, diff.shapes
    if not (missing or unexpected or shapes):
        return
    parts = []
    for what, items in (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                        ("shape mismatch(es)", shapes)):
        if items:
            more = f", ... ({len(items) - max_listed} more)" if len(items) > max_listed else ""
            parts.append(f"{len(items)} {what}: " + "; ".join(items[:max_listed]) + more)
    raise CheckpointMismatchError(
        f"checkpoint {p} does not match the network {type(net).__name__}: " + " | ".join(parts)
        + ". Was it trained with the same configuration (image_size, preset, network_def#attention, ...)?")


def _is_sharded(loader: Any) -> bool:
    return isinstance(getattr(loader, "sampler", None), torch.utils.data.distributed.DistributedSampler)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _load_threshold(threshold: float | str | os.PathLike | None) -> tuple[float | None, str | None]:
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


class EvaluationReport:
    """Collect per-case results during an evaluator run and write the evaluation report at the end.

    Args:
        output_dir: folder to write (created).
        task: ``"classification"`` (binary) or ``"segmentation"``.
        class_names: classification: ``[negative, positive]``; segmentation: all output channels
            (background first; dropped unless ``include_background``) or the foreground ones only.
        positive_index: channel of ``pred`` holding the positive-class probability (classification).
        name: run / bundle name shown in the report and used by ``monai-ext report compare``.
        variant: resolved settings that identify the variant (e.g. ``{"attention":
            "@network_def#attention"}``); recorded in ``provenance.json`` and used by ``compare``.
        split: name of the evaluated split (for the report).
        ckpt_path, ckpt_key: the evaluated checkpoint (hashed) and, for multi-object checkpoints, the key
            of the network's state dict.
        network: the network the checkpoint is loaded into (``"@network_def"``): with ``ckpt_path``, the
            checkpoint is checked against it when the handler is attached, before ``CheckpointLoader``
            runs, so a mismatch fails with a message naming the file and the differing keys / shapes.
        datalist_path: the datalist (hashed).
        config: the resolved config to hash and save as ``config.json``: ``None`` finds the running
            bundle's parser (``python -m monai.bundle run``), or a dict, a ``ConfigParser``, a file or
            a list of files.
        seed, n_bootstrap, ci_level: bootstrap settings.
        validation_data: datalist entries of the validation split (classification); the network is run
            on them with the evaluator's settings and ``postprocessing`` and the Youden threshold is
            chosen there.
        postprocessing: the evaluator's post-processing (needed with ``validation_data``).
        threshold: instead of ``validation_data``: a second threshold, or a JSON file holding it.
        include_background: segmentation metrics for channel 0 too.
        hd95: compute HD95 (segmentation).
        hd95_spacing: ``None`` (voxel units), ``"affine"`` (spacing from the label's affine, i.e. mm
            for NIfTI / DICOM) or a sequence of spacings.
        apf: APF parameters (the bundle's ``@apf``: ``patch_size``, ``num_tokens``, ``mode``, ...): the
            quadtree of every evaluated 2D image (each axial slice of a volume) is planned with
            :func:`monai_ext.transforms.plan_quadtree` to count its leaves, and overlays show them.
        num_overlays: overlay figures (segmentation), from the first cases this rank evaluates.
        max_display_size: overlays of larger images are down-sampled to about this side.
        image_key, label_key, pred_key: keys of the engine output.
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
        ckpt_key: str | None = "model",
        network: torch.nn.Module | None = None,
        datalist_path: str | os.PathLike | None = None,
        config: Any = None,
        seed: int = 0,
        n_bootstrap: int = 1000,
        ci_level: float = 0.95,
        validation_data: Sequence[Mapping[str, Any]] | None = None,
        postprocessing: Any = None,
        threshold: float | str | os.PathLike | None = None,
        include_background: bool = False,
        hd95: bool = True,
        hd95_spacing: str | Sequence[float] | None = None,
        apf: Mapping[str, Any] | None = None,
        num_overlays: int = 4,
        max_display_size: int = 768,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
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
        if isinstance(hd95_spacing, str) and hd95_spacing != "affine":
            raise ValueError(f"hd95_spacing must be None, 'affine' or a sequence of numbers, got {hd95_spacing!r}")
        self.output_dir = Path(output_dir)
        self.task = task
        self.class_names = list(class_names) if class_names is not None else None
        self.positive_index = int(positive_index)
        self.name = name
        self.variant = dict(variant) if variant else {}
        self.split = split
        self.ckpt_path = ckpt_path
        self.ckpt_key = ckpt_key
        self.network = network
        self.datalist_path = datalist_path
        self.config = config
        self.seed = int(seed)
        self.n_bootstrap = int(n_bootstrap)
        self.ci_level = float(ci_level)
        self.validation_data = list(validation_data) if validation_data is not None else None
        self.postprocessing = postprocessing
        self.threshold, self.threshold_source = _load_threshold(threshold)
        self.include_background = bool(include_background)
        self.hd95 = bool(hd95)
        self.hd95_spacing = hd95_spacing
        self.apf = dict(apf) if apf else None
        self.num_overlays = int(num_overlays)
        self.max_display_size = int(max_display_size)
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.records: list[dict[str, Any]] = []
        self.overlays: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] | None = None
        self._t0 = 0.0
        self._seen = 0
        self._dice = self._hd = None

    # ------------------------------------------------------------------ attach / events
    def attach(self, engine) -> None:
        from ignite.engine import Events

        loader = getattr(engine, "data_loader", None)
        dataset = getattr(loader, "dataset", None)
        try:
            n = len(dataset) if dataset is not None else None
        except TypeError:
            n = None
        if n == 0:
            where = f" ({self.datalist_path}, split {self.split!r})" if self.datalist_path else f" (split {self.split!r})"
            raise ValueError(f"the evaluation split is empty{where}: nothing to evaluate")
        # MONAI attaches handlers before the evaluator stores its network: hence the ``network`` argument
        net = self.network if self.network is not None else getattr(engine, "network", None)
        if self.ckpt_path is not None and net is not None:
            check_checkpoint(self.ckpt_path, net, self.ckpt_key)
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self.records, self.overlays, self._seen = [], [], 0
        self._t0 = time.perf_counter()

    def _items(self, engine) -> list[Mapping[str, Any]]:
        from monai.data import decollate_batch

        out = engine.state.output
        if isinstance(out, Mapping):
            out = decollate_batch(out)
        return list(out)

    def _case_id(self, item: Mapping[str, Any]) -> str:
        for key in (self.image_key, self.pred_key, self.label_key):
            cid = case_id_of(item.get(key))
            if cid is not None:
                return cid
        rank, _ = _world()
        return f"rank{rank}_case{self._seen:05d}"

    def _collect(self, engine) -> None:
        for item in self._items(engine):
            cid = self._case_id(item)
            rec = self._classification_record(item) if self.task == "classification" else self._segmentation_record(item)
            rec["case_id"] = cid
            self.records.append(rec)
            self._seen += 1

    # ------------------------------------------------------------------ per case
    def _classification_record(self, item: Mapping[str, Any]) -> dict[str, Any]:
        pred = torch.as_tensor(item[self.pred_key]).detach().float().reshape(-1).cpu()
        if pred.numel() == 1:
            prob = float(pred[0])
        else:
            if not 0 <= self.positive_index < pred.numel():
                raise ValueError(f"positive_index {self.positive_index} outside the {pred.numel()} prediction channels")
            if abs(float(pred.sum()) - 1.0) > 1e-3:
                raise ValueError(f"'{self.pred_key}' does not hold class probabilities (sum {float(pred.sum()):.4f}): "
                                 "add Activationsd(softmax=True) to the evaluator's postprocessing")
            prob = float(pred[self.positive_index])
        if not 0.0 <= prob <= 1.0 or math.isnan(prob):
            raise ValueError(f"'{self.pred_key}' probability {prob} outside [0, 1]: post-process with softmax / sigmoid")
        lab = torch.as_tensor(item[self.label_key]).detach().reshape(-1).cpu()
        if lab.numel() == 1:
            label = int(lab[0])
        elif lab.numel() == pred.numel() and bool(((lab == 0) | (lab == 1)).all()) and float(lab.sum()) == 1:
            label = int(torch.argmax(lab))  # one-hot label (AsDiscreted(to_onehot=K))
        else:
            raise ValueError(f"cannot read a class index from label of shape {tuple(lab.shape)}")
        if pred.numel() > 1:  # one-vs-rest: the positive class against all others
            label = int(label == self.positive_index)
        if label not in (0, 1):
            raise ValueError(f"label {label} is not 0 / 1 (binary classification report)")
        return {"label": label, "probability": prob}

    def _foreground_names(self, n_channels: int) -> list[str]:
        k = n_channels if self.include_background else n_channels - 1
        if self.class_names is None:
            start = 0 if self.include_background else 1
            return [f"class_{i}" for i in range(start, n_channels)]
        names = list(self.class_names)
        if len(names) == n_channels and not self.include_background:
            names = names[1:]
        if len(names) != k:
            raise ValueError(f"class_names has {len(self.class_names)} names but the prediction has {n_channels} "
                             f"channels ({k} scored)")
        return names

    def _all_names(self, n_channels: int) -> list[str]:
        """Names of all ``n_channels`` classes, background (0) first."""
        if self.class_names is not None and len(self.class_names) == n_channels:
            return list(self.class_names)
        fg = self._foreground_names(n_channels)
        return fg if self.include_background else ["background", *fg]

    def _spacing(self, item: Mapping[str, Any], ndim: int) -> list[float] | None:
        if self.hd95_spacing is None:
            return None
        if self.hd95_spacing != "affine":
            return [float(s) for s in self.hd95_spacing]
        for key in (self.label_key, self.image_key, self.pred_key):
            aff = getattr(item.get(key), "affine", None)
            if aff is not None:
                a = torch.as_tensor(aff).double().cpu().numpy()
                return [float(v) for v in np.sqrt((a[:ndim, :ndim] ** 2).sum(axis=0))]
        return None

    def _segmentation_record(self, item: Mapping[str, Any]) -> dict[str, Any]:
        from monai.metrics import DiceMetric, HausdorffDistanceMetric
        from monai.networks.utils import one_hot

        pred = torch.as_tensor(item[self.pred_key]).detach()
        label = torch.as_tensor(item[self.label_key]).detach().to(pred.device)
        if pred.shape[0] < 2:
            raise ValueError(f"'{self.pred_key}' must be one-hot with one channel per class (background "
                             f"included), got shape {tuple(pred.shape)}: post-process with AsDiscreted(argmax=True, "
                             f"to_onehot=num_classes)")
        if label.shape[0] == 1 and pred.shape[0] > 1:
            label = one_hot(label[None].long(), num_classes=pred.shape[0])[0]
        if label.shape != pred.shape:
            raise ValueError(f"label shape {tuple(label.shape)} differs from prediction shape {tuple(pred.shape)}")
        if not bool(((pred == 0) | (pred == 1)).all()):
            raise ValueError(f"'{self.pred_key}' is not binary: post-process with AsDiscreted(argmax=True, "
                             f"to_onehot=num_classes) before the report")
        names = self._foreground_names(pred.shape[0])
        if self._dice is None:
            self._dice = DiceMetric(include_background=self.include_background, reduction="none")
            self._hd = HausdorffDistanceMetric(include_background=self.include_background, percentile=95,
                                               reduction="none")
        p, y = pred[None].float(), label[None].float()
        with warnings.catch_warnings():  # empty classes give NaN, counted in the report
            warnings.filterwarnings("ignore", message=".*(is all 0|always_return_as_numpy).*")
            dice = self._dice(p, y).reshape(-1).cpu().double().numpy()
            self._dice.reset()
            rec: dict[str, Any] = {"dice": dice.tolist(), "hd95": None}
            if self.hd95:
                spacing = self._spacing(item, pred.ndim - 1)
                hd = self._hd(p, y, spacing=spacing) if spacing is not None else self._hd(p, y)
                self._hd.reset()
                rec["hd95"] = hd.reshape(-1).cpu().double().numpy().tolist()
        if len(names) != dice.size:
            raise ValueError(f"{dice.size} Dice values but {len(names)} class names")
        image = item.get(self.image_key)
        spatial = pred.ndim - 1
        rec["num_images"] = int(pred.shape[-1]) if spatial == 3 else 1
        if self.apf is not None and image is not None:
            rec["num_leaves"] = self._mean_leaves(image, spatial)
        if image is not None and len(self.overlays) < self.num_overlays:
            self._keep_overlay(image, pred, label, dice, spatial, item)
        return rec

    def _slices(self, image: Any, spatial: int) -> list[np.ndarray]:
        arr = torch.as_tensor(image).detach().float().cpu().numpy()
        return [arr[..., z] for z in range(arr.shape[-1])] if spatial == 3 else [arr]

    def _mean_leaves(self, image: Any, spatial: int) -> float:
        from ..transforms import plan_quadtree

        counts = [plan_quadtree(sl, **self.apf)["num_leaves"] for sl in self._slices(image, spatial)]
        return float(np.mean(counts))

    def _keep_overlay(self, image: Any, pred: torch.Tensor, label: torch.Tensor, dice: np.ndarray, spatial: int,
                      item: Mapping[str, Any]) -> None:
        lab_map = torch.argmax(label, dim=0).cpu().numpy()
        pred_map = torch.argmax(pred, dim=0).cpu().numpy()
        img = torch.as_tensor(image).detach().float().cpu().numpy()
        where = ""
        if spatial == 3:  # the axial slice with the most ground-truth foreground
            fg = (lab_map > 0).reshape(-1, lab_map.shape[-1]).sum(axis=0)
            z = int(np.argmax(fg)) if fg.max() > 0 else lab_map.shape[-1] // 2
            img, lab_map, pred_map = img[..., z], lab_map[..., z], pred_map[..., z]
            where = f", slice {z}"
        elif spatial != 2:
            return
        leaves = None
        if self.apf is not None:
            from ..transforms import plan_quadtree

            leaves = plan_quadtree(img, **self.apf)["leaves"]
        step = max(1, math.ceil(max(img.shape[-2:]) / self.max_display_size))
        cid = self._case_id(item)
        mean = np.nanmean(dice) if np.any(~np.isnan(dice)) else float("nan")
        self.overlays.append({
            "image": img[:, ::step, ::step], "label": lab_map[::step, ::step], "pred": pred_map[::step, ::step],
            "leaves": leaves, "scale": 1.0 / step, "class_names": self._all_names(pred.shape[0]),
            "title": f"{cid}{where}: mean Dice {mean:.3f}",
            "caption": f"Case {cid}{where}: image, ground truth, prediction" + (", APF quadtree leaves" if leaves is not None else "")
                       + (f" (display down-sampled {step}x)" if step > 1 else ""),
        })

    # ------------------------------------------------------------------ validation pass (threshold)
    def _run_validation(self, engine) -> list[dict[str, Any]]:
        from monai.data import DataLoader, Dataset, DistributedSampler
        from monai.engines import SupervisedEvaluator
        from ignite.engine import Events

        test_loader = engine.data_loader
        transform = getattr(test_loader.dataset, "transform", None)
        dataset = Dataset(data=self.validation_data, transform=transform)
        sampler = DistributedSampler(dataset, shuffle=False, even_divisible=False) if _is_sharded(test_loader) else None
        loader = DataLoader(dataset, batch_size=test_loader.batch_size or 1, shuffle=False, sampler=sampler,
                            num_workers=test_loader.num_workers, collate_fn=test_loader.collate_fn)
        evaluator = SupervisedEvaluator(
            device=engine.state.device, val_data_loader=loader, network=engine.network, inferer=engine.inferer,
            prepare_batch=engine.prepare_batch, postprocessing=self.postprocessing, amp=engine.amp,
            non_blocking=engine.non_blocking)
        records: list[dict[str, Any]] = []

        def collect(e) -> None:
            for item in self._items(e):
                rec = self._classification_record(item)
                rec["case_id"] = self._case_id(item)
                records.append(rec)

        evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)
        logger.info("running the network on %d validation case(s) to choose the Youden threshold",
                    len(self.validation_data))
        evaluator.run()
        return self._gather(records, loader, "validation")

    # ------------------------------------------------------------------ DDP
    def _gather(self, records: list[dict[str, Any]], loader: Any, what: str) -> list[dict[str, Any]]:
        rank, world = _world()
        if world == 1 or not _is_sharded(loader):
            return records
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, records)
        merged = [r for part in parts for r in part]
        n = len(loader.dataset)
        if len(merged) != n:
            raise RuntimeError(
                f"{what}: gathered {len(merged)} per-case results from {world} ranks but the dataset has {n} cases; "
                f"the DistributedSampler pads or drops cases -- use monai.data.DistributedSampler(even_divisible=False)")
        return merged

    # ------------------------------------------------------------------ end of run
    def _completed(self, engine) -> None:
        t_test = time.perf_counter() - self._t0
        records = self._gather(self.records, engine.data_loader, self.split)
        validation, t_val = None, None
        if self.validation_data is not None:
            t1 = time.perf_counter()
            validation = self._run_validation(engine)
            t_val = time.perf_counter() - t1
        rank, world = _world()
        if rank != 0:
            return
        if not records:
            raise ValueError(f"no cases were evaluated in split {self.split!r}: nothing to report")
        cfg, cfg_source = resolve_config(self.config)
        n_cases = len(records)
        n_images = sum(int(r.get("num_images", 1) or 1) for r in records)
        timing = {"evaluation_s": t_test, "seconds_per_case": t_test / n_cases, "seconds_per_image": t_test / n_images}
        if t_val is not None:
            timing["threshold_selection_s"] = t_val  # the network on the validation split
        seeds: dict[str, Any] = {"bootstrap": self.seed}
        if isinstance(cfg, Mapping) and isinstance(cfg.get("seed"), int):
            seeds["config"] = cfg["seed"]
        prov = {
            "run": {"name": self.name, "task": self.task, "split": self.split, "variant": self.variant,
                    "n_cases": n_cases, "n_images": n_images,
                    "n_validation_cases": len(validation) if validation is not None else None},
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_info(),
            "packages": package_versions(),
            "device": device_info(engine.state.device),
            "world_size": world,
            "seeds": seeds,
            "files": {"checkpoint": file_record(self.ckpt_path), "datalist": file_record(self.datalist_path)},
            "config": {"sha256": sha256_json(cfg) if cfg is not None else None, "source": cfg_source,
                       "file": "config.json" if cfg is not None else None},
            "timing": timing,
            "command": command_line(),
            "cwd": os.getcwd(),
        }
        if self.apf is not None:
            prov["run"]["apf"] = self.apf
        hd_unit = "voxel" if self.hd95_spacing is None else "mm"
        names = self.class_names
        if self.task == "segmentation" and records:
            k = len(records[0]["dice"])
            names = self._foreground_names(k if self.include_background else k + 1)
        self.metrics = write_report(
            self.output_dir, self.task, records, prov, class_names=names, validation_records=validation,
            threshold=self.threshold, threshold_source=self.threshold_source, n_bootstrap=self.n_bootstrap,
            seed=self.seed, ci_level=self.ci_level, hd95_unit=hd_unit, apf=self.apf, overlays=self.overlays,
            config=cfg)
