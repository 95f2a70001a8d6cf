"""Identified, exactly resumable training runs (``monai_ext.workflows.ResumableCheckpoint``), on a tiny MONAI
trainer: shuffled data with random transforms, dropout, AdamW or SGD with momentum, cosine LR schedule,
validation with a best-model ``CheckpointSaver`` (``model.pt``), as in the bundles.

- fault injection: SIGKILL at random points (mid-epoch, mid-validation, while a checkpoint is written, just
  after one) and ``resume=True`` each time ends in the same state as an uninterrupted run, exactly;
- the LR schedule after a resume equals the uninterrupted run's, epoch for epoch, whatever the handler order;
- another run's checkpoint is refused with a message naming both runs; a finished run is not resumed into a
  no-op; a new run moves the previous run's files to ``previous/<run id>/``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import signal
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    ROCAUC,
    CheckpointSaver,
    LrScheduleHandler,
    ValidationHandler,
    from_engine,
)
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    RandFlipd,
    RandGaussianNoised,
)
from monai.utils import set_determinism
from resume_utils import assert_same_run_state, assert_same_state, load

from monai_ext.workflows import ResumableCheckpoint, ResumeError
from monai_ext.workflows.runs import archive_previous_run, config_hash

EPOCHS = 6


def _data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, 6, 6, generator=g) + (i % 2), "label": i % 2} for i in range(n)]


def _build(ckpt_dir: Path, *, resume: bool = False, lr: float = 0.05, optimizer: str = "adamw",
           epochs: int = EPOCHS, checkpoint_first: bool = True, num_workers: int = 0, flip_prob: float = 0.5,
           width: int = 16, seed: int = 0, data_dir: str = "/data", label_smoothing: float = 0.0):
    """The bundles' training set-up in miniature; returns (trainer, evaluator, network, optimizer)."""
    set_determinism(seed)
    train = _data(12, 1)
    for i, item in enumerate(train):
        item["path"] = f"{data_dir}/img{i}.png"  # a datalist entry's file path (not read)
        item["note"] = f"notes/{i}.txt"  # a relative path, e.g. PAIP's label_whole
    transform = Compose([RandFlipd(keys="image", prob=flip_prob, spatial_axis=0),
                         RandGaussianNoised(keys="image", prob=0.5, std=0.1)])
    loader = DataLoader(Dataset(train, transform), batch_size=4, shuffle=True, num_workers=num_workers)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, width), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(width, 2))
    opt = (torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01) if optimizer == "adamw"
           else torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(_data(8, 2)), batch_size=4), network=net,
        postprocessing=Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="label", to_onehot=2)]),
        key_val_metric={"val_auroc": ROCAUC(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[CheckpointSaver(save_dir=str(ckpt_dir), save_dict={"model": net}, save_key_metric=True,
                                      key_metric_filename="model.pt")])
    ckpt = ResumableCheckpoint(ckpt_dir, {"network": net, "optimizer": opt, "lr_scheduler": sched}, resume=resume,
                               run_definition={"seed": seed, "loss": loss}, validator=evaluator)
    others = [LrScheduleHandler(sched, print_lr=False), ValidationHandler(validator=evaluator, interval=1)]
    # the PAIP/BTCV bundles listed the checkpoint handler first, DUKE/VinDr after the LR step
    handlers = [ckpt, *others] if checkpoint_first else [*others, ckpt]
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                                optimizer=opt, loss_function=loss, train_handlers=handlers)
    return trainer, evaluator, net, opt


def _record_history(trainer, evaluator, opt, path: Path) -> None:
    """Append the end-of-epoch LR and validation state to a JSON-lines file (a re-run epoch appends again)."""

    def record(engine) -> None:
        row = {"epoch": engine.state.epoch, "lr": opt.param_groups[0]["lr"],
               "val": evaluator.state.metrics["val_auroc"], "best": evaluator.state.best_metric,
               "best_epoch": evaluator.state.best_metric_epoch}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")

    trainer.add_event_handler(Events.EPOCH_COMPLETED, record)


def _history(path: Path) -> list[dict]:
    """One row per epoch, the last one written for it (a resumed run repeats the epochs after its checkpoint)."""
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


def _inject(trainer, evaluator, kill: tuple) -> None:
    """SIGKILL this process at ``kill``: ("iteration", epoch, i), ("validation", epoch),
    ("checkpoint_write", epoch) (part of the file written) or ("after_checkpoint", epoch)."""

    def die(*_) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    kind, epoch = kill[0], kill[1]
    if kind == "iteration":
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.state.epoch == epoch and (
            (e.state.iteration - 1) % e.state.epoch_length + 1 == kill[2]) and die())
    elif kind == "validation":
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: trainer.state.epoch == epoch and die())
    elif kind == "after_checkpoint":
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: e.state.epoch == epoch + 1 and die())
    elif kind == "checkpoint_write":
        real_save = torch.save

        def dying_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "trainer" in obj and trainer.state.epoch == epoch:
                real_save({"partial": torch.zeros(100)}, f)
                die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = dying_save
    else:
        raise ValueError(kill)


def _child(ckpt_dir: Path, history: Path, resume: bool, kill: tuple | None, optimizer: str) -> None:
    torch.set_num_threads(1)
    trainer, evaluator, _, opt = _build(ckpt_dir, resume=resume, optimizer=optimizer)
    _record_history(trainer, evaluator, opt, history)
    if kill is not None:
        _inject(trainer, evaluator, kill)
    trainer.run()


def _run_process(ckpt_dir: Path, history: Path, resume: bool, kill: tuple | None, optimizer: str) -> int:
    # fork: the child starts with torch and MONAI imported (seconds saved per run) and is really SIGKILLed
    p = mp.get_context("fork").Process(target=_child, args=(ckpt_dir, history, resume, kill, optimizer))
    p.start()
    p.join(120)
    assert p.exitcode is not None, "training process hung"
    return p.exitcode


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> None:
    """One short run in this process first, so that forked children start with MONAI's lazy imports done
    (0.4 s instead of 8 s per child)."""
    trainer, *_ = _build(tmp_path_factory.mktemp("warm"), epochs=1)
    trainer.run()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd_momentum"])
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, optimizer, warm):
    rng = random.Random(f"faults-{optimizer}")
    kinds = ["iteration", "validation", "checkpoint_write", "after_checkpoint"]
    epochs = sorted(rng.sample(range(1, EPOCHS), 4))  # increasing, so that every resumed run gets killed again
    plan = [(k, e, rng.randint(1, 3)) if k == "iteration" else (k, e) for k, e in zip(rng.sample(kinds, 4), epochs)]

    killed, ref = tmp_path / "killed", tmp_path / "ref"
    for i, kill in enumerate(plan):
        code = _run_process(killed / "models", killed / "history.jsonl", resume=i > 0, kill=kill, optimizer=optimizer)
        assert code == -signal.SIGKILL, f"run {i} was to be killed at {kill} (plan {plan}), exit code {code}"
    assert _run_process(killed / "models", killed / "history.jsonl", True, None, optimizer) == 0, f"plan {plan}"
    assert _run_process(ref / "models", ref / "history.jsonl", False, None, optimizer) == 0

    got, want = _history(killed / "history.jsonl"), _history(ref / "history.jsonl")
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))
    assert got == want, f"LR / validation history differs after kills at {plan}"
    models, ref_models = killed / "models", ref / "models"
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == [f"checkpoint_epoch={EPOCHS}.pt"]
    assert_same_run_state(models / f"checkpoint_epoch={EPOCHS}.pt", ref_models / f"checkpoint_epoch={EPOCHS}.pt")
    assert_same_state(load(models / "model.pt"), load(ref_models / "model.pt"), "model.pt")
    run = json.loads((models / "run.json").read_text())
    assert run["resumed_from_epochs"] == sorted(run["resumed_from_epochs"]) and run["resumed_from_epochs"]
    assert load(models / f"checkpoint_epoch={EPOCHS}.pt")["run"]["run_id"] == run["run_id"]


def _stop_after(trainer, epoch: int) -> None:
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=epoch), lambda e: e.terminate())


@pytest.mark.parametrize("checkpoint_first", [True, False])
def test_lr_schedule_after_resume_equals_uninterrupted(tmp_path, checkpoint_first):
    """Issue 13 item 6: with the checkpoint handler listed before the LR step (as in the PAIP and BTCV bundles)
    the checkpoint was saved before the scheduler stepped, and the resumed run lagged one epoch."""
    lrs: dict[str, list[float]] = {"ref": [], "resumed": []}

    def track(trainer, opt, key):
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: lrs[key].append(opt.param_groups[0]["lr"]))

    trainer, _, _, opt = _build(tmp_path / "ref", checkpoint_first=checkpoint_first)
    track(trainer, opt, "ref")
    trainer.run()
    trainer, _, _, opt = _build(tmp_path / "a", checkpoint_first=checkpoint_first)
    track(trainer, opt, "resumed")
    _stop_after(trainer, 3)
    trainer.run()
    trainer, _, _, opt = _build(tmp_path / "a", resume=True, checkpoint_first=checkpoint_first)
    track(trainer, opt, "resumed")
    trainer.run()
    assert trainer.state.epoch == EPOCHS and len(lrs["resumed"]) == EPOCHS
    assert lrs["resumed"] == lrs["ref"]  # exact: the same scheduler steps
    assert lrs["ref"][-1] == pytest.approx(0.0, abs=1e-12)
    state = load(tmp_path / "a" / f"checkpoint_epoch={EPOCHS}.pt")
    assert state["lr_scheduler"]["last_epoch"] == EPOCHS
    assert_same_run_state(tmp_path / "a" / f"checkpoint_epoch={EPOCHS}.pt",
                          tmp_path / "ref" / f"checkpoint_epoch={EPOCHS}.pt")


def test_stale_checkpoint_refused_and_previous_run_kept(tmp_path, caplog):
    """Issue 13 item 1: a finished run A, then a new run B with another learning rate stopped at epoch 2:
    B keeps A's files in previous/<A>/; --resume continues B only with B's configuration; another run's
    checkpoint and a finished run are refused before training, naming both runs."""
    models = tmp_path / "models"
    (models).mkdir()
    (models / "notes.txt").write_text("mine")  # a user's file: never moved
    a, *_ = _build(models, lr=0.05)
    a.run()
    run_a = json.loads((models / "run.json").read_text())["run_id"]
    model_a = (models / "model.pt").read_bytes()

    b, *_ = _build(models, lr=0.01)
    _stop_after(b, 2)
    b.run()
    kept = models / "previous" / run_a
    assert sorted(p.name for p in kept.iterdir()) == [f"checkpoint_epoch={EPOCHS}.pt", "model.pt", "run.json"]
    assert (kept / "model.pt").read_bytes() == model_a  # A's best model, untouched
    assert (models / "notes.txt").read_text() == "mine"
    run_b = json.loads((models / "run.json").read_text())["run_id"]
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt"]

    with pytest.raises(ResumeError) as err:  # A's configuration against B's checkpoint
        _build(models, lr=0.05, resume=True)
    msg = str(err.value)
    assert f"belongs to run {run_b}" in msg and f"the configuration of run {run_a}" in msg
    assert "differs in: lr_scheduler, optimizer" in msg and "leave out `--resume true`" in msg

    # the layout (old code left A's epoch-6 checkpoint next to B's epoch-2 one): refused, not loaded
    shutil.copy(kept / f"checkpoint_epoch={EPOCHS}.pt", models)
    with pytest.raises(ResumeError, match=f"belongs to run {run_a}"):
        _build(models, lr=0.01, resume=True)
    (models / f"checkpoint_epoch={EPOCHS}.pt").unlink()

    b2, *_ = _build(models, lr=0.01, resume=True)  # B's configuration: continues B from epoch 2
    b2.run()
    assert b2.state.epoch == EPOCHS
    ref, *_ = _build(tmp_path / "ref", lr=0.01)
    ref.run()
    assert_same_run_state(models / f"checkpoint_epoch={EPOCHS}.pt", tmp_path / "ref" / f"checkpoint_epoch={EPOCHS}.pt")

    with pytest.raises(ResumeError, match=rf"nothing to resume: run {run_b} already finished "
                                          rf"\(checkpoint_epoch={EPOCHS}.pt is epoch {EPOCHS} of {EPOCHS}\)"):
        _build(models, lr=0.01, resume=True)

    c, *_ = _build(models, lr=0.01)  # the same configuration again, as a new run: B is kept too
    c.run()
    assert sorted(p.name for p in (models / "previous").iterdir()) == sorted([run_a, run_b])


def test_checkpoint_without_run_identity_is_refused(tmp_path):
    _, _, net, _ = _build(tmp_path)
    torch.save({"network": net.state_dict(), "trainer": {"epoch_length": 3, "max_epochs": 6, "iteration": 6}},
               tmp_path / "checkpoint_epoch=2.pt")
    with pytest.raises(ResumeError, match="has no run identity"):
        _build(tmp_path, resume=True)


def test_resume_without_checkpoint_starts_a_new_run(tmp_path, caplog):
    trainer, *_ = _build(tmp_path, resume=True, epochs=1)
    with caplog.at_level("WARNING"):
        trainer.run()
    assert "resume requested but there is no checkpoint_epoch=*.pt" in caplog.text
    assert (tmp_path / "checkpoint_epoch=1.pt").is_file()


def _parts(tmp_path, **kw) -> dict[str, str]:
    trainer, _, _, _ = _build(tmp_path, **kw)
    ckpt = next(h for h in trainer._event_handlers[Events.STARTED] if isinstance(getattr(h[0], "__self__", None),
                                                                                   ResumableCheckpoint))[0].__self__
    return ckpt.run.parts


def test_config_hash_follows_what_defines_the_run(tmp_path):
    base = _parts(tmp_path)
    assert set(base) == {"network", "optimizer", "lr_scheduler", "data", "run_definition.loss", "run_definition.seed"}
    assert _parts(tmp_path) == base  # deterministic
    # not part of the run: the loader's worker count, where the dataset lies
    assert _parts(tmp_path, num_workers=2) == base
    assert _parts(tmp_path, data_dir="/elsewhere/data") == base
    changed = {"lr": 0.01, "optimizer": "sgd", "epochs": 8, "flip_prob": 0.2, "width": 8, "seed": 1,
               "label_smoothing": 0.1}
    want = {"lr": {"optimizer", "lr_scheduler"}, "optimizer": {"optimizer"}, "epochs": {"lr_scheduler"},
            "flip_prob": {"data"}, "width": {"network"}, "seed": {"run_definition.seed"},
            "label_smoothing": {"run_definition.loss"}}
    for key, value in changed.items():
        parts = _parts(tmp_path, **{key: value})
        assert {k for k in base if parts[k] != base[k]} == want[key], key


def test_config_hash_of_plain_values():
    h1, p1 = config_hash({"a": 1, "b": [1.5, "x"]})
    h2, p2 = config_hash({"b": [1.5, "x"], "a": 1})
    assert h1 == h2 and p1 == p2 and len(h1) == 12
    assert config_hash({"a": 2, "b": [1.5, "x"]})[1]["a"] != p1["a"]


def test_archive_never_overwrites(tmp_path):
    for name in ("model.pt", "run.json", "checkpoint_epoch=3.pt", "pretrained.pt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "previous" / "R1").mkdir(parents=True)
    (tmp_path / "previous" / "R1" / "model.pt").write_text("older")
    dest = archive_previous_run(tmp_path, ("checkpoint_epoch=*.pt", "model.pt", "run.json"), "R1")
    assert dest == tmp_path / "previous" / "R1-2"
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint_epoch=3.pt", "model.pt", "run.json"]
    assert (tmp_path / "previous" / "R1" / "model.pt").read_text() == "older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrained.pt", "previous"]
    assert archive_previous_run(tmp_path, ("model.pt",), "R2") is None
