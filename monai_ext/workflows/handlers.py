"""Ignite handlers: identified, exactly resumable training runs; per-epoch loss; a progress bar that works on
ignite 0.4/0.5."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils.checkpoint import load_checkpoint
from .distributed import is_main_process
from .runs import (
    RandomState,
    ResumeError,
    RunInfo,
    ValidationState,
    archive_previous_run,
    config_hash,
    new_run_id,
)

try:  # ignite >= 0.5
    from ignite.handlers import ProgressBar as _IgniteProgressBar
except ImportError:  # ignite 0.4.x (MONAI Label's environment)
    from ignite.contrib.handlers import ProgressBar as _IgniteProgressBar

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> Path | None:
    """The ``checkpoint_epoch=N.pt`` file with the highest ``N`` in ``ckpt_dir`` (MONAI CheckpointSaver's
    interval naming), or None."""
    best: tuple[int, Path] | None = None
    for p in Path(ckpt_dir).glob(f"{prefix}_epoch=*.pt"):
        m = _EPOCH.search(p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return None if best is None else best[1]


class ResumableCheckpoint:
    """Save a full training checkpoint every ``save_interval`` epochs and, with ``resume=True``, continue the
    run it belongs to, exactly where it stopped.

    A run has an id (``YYYYmmdd-HHMMSS-<hash>``) and a configuration hash (see :mod:`monai_ext.workflows.runs`):
    network, optimizer, LR scheduler, training data (datalist, transforms, batch size, sampler), loss, and
    ``run_definition`` (the bundles give the seed and the loss function). Every checkpoint records both.
    ``resume=True`` loads the latest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` only if its hash equals this
    configuration's; otherwise it stops before training with a :class:`ResumeError` naming both runs and what to do;
    likewise when that run already finished all its epochs or the checkpoint has no run identity. Without a
    checkpoint, ``resume`` starts a new run (with a warning).

    A new run first moves the previous run's files (``run_files``: checkpoints, ``model.pt``, ``run.json``)
    into ``ckpt_dir/previous/<run id>/``; nothing is deleted or overwritten. It writes ``run.json``.

    Saved objects are ``objects`` (network, optimizer, scheduler, ...) plus the trainer (epoch, iteration),
    the random state (torch, numpy, Python, the training transforms' generators), the AMP grad scaler, the
    run identity and, with ``validator``, the evaluator's best metric and the key-metric list of its
    ``CheckpointSaver`` (so ``model.pt`` is only replaced by a better model, as without interruption). The
    checkpoint is written after every other end-of-epoch handler (LR step, validation), whatever the order
    of the handler list, so a resumed run continues with the same LR schedule and data order as an
    uninterrupted one. Files are written atomically on rank 0; only the newest ``n_saved`` are kept.
    Put this handler first in the trainer's handler list (it loads at ``STARTED``).
    """

    def __init__(self, ckpt_dir: str | Path, objects: Mapping[str, Any], resume: bool = False,
                 save_interval: int = 1, n_saved: int = 1, map_location: Any = None,
                 run_definition: Mapping[str, Any] | None = None, validator: Any = None,
                 run_files: Sequence[str] = ("checkpoint_epoch=*.pt", "model.pt", "run.json")) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = dict(objects)
        self.resume = bool(resume)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.prefix = "checkpoint"
        self.map_location = (
            map_location if map_location is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.run_definition = dict(run_definition or {})
        self.validator = validator
        self.run_files = tuple(run_files)
        self.run: RunInfo | None = None
        self._checkpoint: tuple[Path, Mapping[str, Any]] | None = None
        self._saver: Any = None

    # -- identity -------------------------------------------------------------------------------------
    def _parts(self, engine) -> dict[str, Any]:
        parts: dict[str, Any] = {k: v for k, v in self.objects.items()
                                 if isinstance(v, (torch.nn.Module, torch.optim.Optimizer)) or hasattr(v, "last_epoch")}
        if getattr(engine, "data_loader", None) is not None:
            parts["data"] = engine.data_loader
        parts.update({f"run_definition.{k}": v for k, v in self.run_definition.items()})
        return parts

    def _check(self, path: Path, ckpt: Mapping[str, Any], max_epochs: int | None) -> None:
        """Raise :class:`ResumeError` unless ``ckpt`` continues this run."""
        assert self.run is not None
        how_new = (f"to start a new run with this configuration, leave out `--resume true` (the files in "
                   f"{self.ckpt_dir} are then moved to {self.ckpt_dir / 'previous'}/<run id>/)")
        info = ckpt.get("run") if isinstance(ckpt, Mapping) else None
        if not isinstance(info, Mapping) or "config_hash" not in info:
            raise ResumeError(f"cannot resume from {path}: it has no run identity (written before runs were "
                              f"identified), so it cannot be checked against this configuration; {how_new}")
        epoch = _epoch_of(ckpt)
        if info["config_hash"] != self.run.cfg_hash:
            old_parts = info.get("parts", {})
            differs = sorted(
                k for k in set(old_parts) | set(self.run.parts) if old_parts.get(k) != self.run.parts.get(k)
            )
            raise ResumeError(
                f"cannot resume: {path} belongs to run {info['run_id']} (configuration {info['config_hash']}, "
                f"epoch {epoch} of {info.get('max_epochs')}), but this configuration is {self.run.cfg_hash}"
                f"{self._earlier_run_note()} (differs in: {', '.join(differs) or 'unknown'}). To continue run "
                f"{info['run_id']}, use the configuration and overrides it was started with; {how_new}")
        if max_epochs is not None and epoch >= max_epochs:
            raise ResumeError(
                f"nothing to resume: run {info['run_id']} already finished ({path.name} is epoch {epoch} of "
                f"{max_epochs}); {how_new}")

    def _earlier_run_note(self) -> str:
        """", the configuration of run R (files in DIR)" when an archived run had this configuration."""
        for run_json in sorted((self.ckpt_dir / "previous").glob("*/run.json"), reverse=True):
            try:
                info = json.loads(run_json.read_text())
            except ValueError:
                continue
            if info.get("config_hash") == self.run.cfg_hash:  # type: ignore[union-attr]
                return f", the configuration of run {info.get('run_id')} (its files are in {run_json.parent})"
        return ""

    def attach(self, engine) -> None:
        from ignite.engine import Events

        cfg_hash, parts = config_hash(self._parts(engine))
        max_epochs = getattr(engine.state, "max_epochs", None)
        self.run = RunInfo(new_run_id(cfg_hash), cfg_hash, parts, max_epochs)
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir, self.prefix)
            if path is None:
                logger.warning("resume requested but there is no %s_epoch=*.pt in %s: starting a new run",
                               self.prefix, self.ckpt_dir)
            else:
                ckpt = load_checkpoint(path, map_location=self.map_location)
                self._check(path, ckpt, max_epochs)
                self.run.run_id = str(ckpt["run"]["run_id"])
                self._checkpoint = (path, ckpt)
        self._objects = {**self.objects, "trainer": engine, "run": self.run,
                         "random_state": RandomState(getattr(engine, "data_loader", None))}
        if self.validator is not None:
            self._objects["validation"] = ValidationState(self.validator)
        engine.add_event_handler(Events.STARTED, self._started)

    # -- events ---------------------------------------------------------------------------------------
    def _started(self, engine) -> None:
        from ignite.engine import Events
        from ignite.handlers import Checkpoint, DiskSaver

        assert self.run is not None
        if getattr(engine, "scaler", None) is not None:  # AMP (MONAI creates the scaler in run())
            self._objects["grad_scaler"] = engine.scaler
        if self._checkpoint is not None:
            path, ckpt = self._checkpoint
            self._checkpoint = None
            self._check(path, ckpt, engine.state.max_epochs)
            to_load = {k: v for k, v in self._objects.items() if k in ckpt and k != "run"}
            missing = sorted(set(self._objects) - set(ckpt) - {"run"})
            if missing:
                logger.warning("%s has no state for %s; those start fresh", path, ", ".join(missing))
            prior_max_epochs = engine.state.max_epochs
            Checkpoint.load_objects(to_load=to_load, checkpoint=ckpt)
            engine.state.max_epochs = prior_max_epochs
            logger.info("resuming run %s from %s (epoch %d of %d)", self.run.run_id, path, engine.state.epoch,
                        prior_max_epochs)
            self._update_run_json(resumed_from=engine.state.epoch)
        elif is_main_process():
            self._start_new_run()
        if self._saver is None:
            # ignite names multi-object checkpoints "checkpoint_epoch=N.pt" (prefix "" keeps it so). Written
            # atomically (temporary file, then rename): a kill during the write leaves no truncated file.
            # Registered now, after every handler attached at construction, so it runs last at EPOCH_COMPLETED.
            self._saver = Checkpoint(self._objects, DiskSaver(str(self.ckpt_dir), require_empty=False, atomic=True),
                                     filename_prefix="", score_function=lambda e: e.state.epoch, score_name="epoch",
                                     n_saved=self.n_saved)
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._saver)
        if engine.state.epoch > 0:  # the resumed file is the newest kept one (removed once n_saved newer exist)
            key = next(iter(self._saver.state_dict()))
            name = f"{self.prefix}_epoch={engine.state.epoch}.pt"
            if (self.ckpt_dir / name).is_file():
                self._saver.load_state_dict({key: [(engine.state.epoch, name)]})

    def _previous_run_id(self) -> tuple[str | None, Mapping[str, Any] | None]:
        run_json = self.ckpt_dir / "run.json"
        if run_json.is_file():
            try:
                info = json.loads(run_json.read_text())
                return str(info["run_id"]), info
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("%s: unreadable (%s); the run is identified from its checkpoint", run_json, e)
        path = latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is not None:
            try:
                info = load_checkpoint(path, map_location="cpu").get("run")
                return str(info["run_id"]), info
            except Exception as e:  # noqa: BLE001 - an unreadable or unidentified file is still moved aside
                logger.warning("%s: no run identity (%s); moved aside as an unidentified run", path, e)
        return None, None

    def _start_new_run(self) -> None:
        assert self.run is not None
        prev_id, prev = self._previous_run_id()
        moved = archive_previous_run(self.ckpt_dir, self.run_files, prev_id)
        if moved is not None:
            logger.info("new run %s: the files of the previous run %s in %s were moved to %s", self.run.run_id,
                        prev_id or "(unidentified)", self.ckpt_dir, moved)
            last = latest_checkpoint(moved, self.prefix)
            if prev and prev.get("config_hash") == self.run.cfg_hash and last is not None and \
                    prev.get("max_epochs") and _epoch_from_name(last) < int(prev["max_epochs"]):
                logger.warning("the previous run %s had the same configuration and was not finished; to continue "
                               "it, move its files back from %s and use `--resume true`", prev_id, moved)
        else:
            logger.info("new run %s (configuration %s)", self.run.run_id, self.run.cfg_hash)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        body = {**self.run.state_dict(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "resumed_from_epochs": []}
        (self.ckpt_dir / "run.json").write_text(json.dumps(body, indent=1) + "\n")

    def _update_run_json(self, resumed_from: int) -> None:
        run_json = self.ckpt_dir / "run.json"
        if not is_main_process() or not run_json.is_file():
            return
        try:
            body = json.loads(run_json.read_text())
        except ValueError:
            return
        if body.get("run_id") == self.run.run_id:  # type: ignore[union-attr]
            body.setdefault("resumed_from_epochs", []).append(resumed_from)
            run_json.write_text(json.dumps(body, indent=1) + "\n")


def _epoch_of(ckpt: Mapping[str, Any]) -> int:
    t = ckpt.get("trainer", {})
    if "epoch" in t:
        return int(t["epoch"])
    return int(t["iteration"]) // max(int(t.get("epoch_length") or 1), 1)


def _epoch_from_name(path: Path) -> int:
    m = _EPOCH.search(path.name)
    return int(m.group(1)) if m else -1


class EpochAverage:
    """The mean of a per-iteration value (by default the training loss) over each epoch, kept as
    ``engine.state.metrics[name]`` so that ``StatsHandler`` / ``TensorBoardStatsHandler`` log it once per epoch
    (list it before them). ignite's ``Average``: averaged over all ranks under DDP."""

    def __init__(self, name: str = "train_loss", output_transform: Any = None) -> None:
        self.name = name
        self.output_transform = output_transform if output_transform is not None else _loss_tensor

    def attach(self, engine) -> None:
        from ignite.metrics import Average

        Average(output_transform=self.output_transform).attach(engine, self.name)


def _loss_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, list) and output and isinstance(output[0], Mapping):
        output = output[0]
    return output["loss"].detach() if torch.is_tensor(output["loss"]) else torch.tensor(float(output["loss"]))


class ProgressBar(_IgniteProgressBar):
    """ignite's tqdm progress bar as a MONAI handler (``attach(engine)`` with defaults)."""

    def __init__(self, persist: bool = False, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)

    def attach(self, engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().attach(engine, *args, output_transform=kwargs.pop("output_transform", _loss_of), **kwargs)


def _loss_of(output: Any) -> dict[str, float]:
    """Show the batch loss of MONAI's decollated trainer output."""
    if isinstance(output, list) and output and isinstance(output[0], Mapping) and "loss" in output[0]:
        loss = output[0]["loss"]
        return {"loss": float(loss)}
    if isinstance(output, Mapping) and "loss" in output:
        return {"loss": float(output["loss"])}
    return {}
