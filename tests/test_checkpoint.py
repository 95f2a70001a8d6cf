"""The package's one checkpoint loader (``monai_ext.utils.checkpoint``): weights only, every layout, every
load path refuses a malicious pickle without running it, and the explicit ``convert-checkpoint`` opt-in."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext import bundle_tools as bt
from monai_ext.cli import main as cli_main
from monai_ext.networks import ViT, transfer_weights
from monai_ext.reports import (
    CheckpointMismatchError,
    EvaluationReport,
    check_checkpoint,
)
from monai_ext.utils.checkpoint import (
    CheckpointError,
    SafeCheckpointLoader,
    UnsafeCheckpointError,
    convert_checkpoint,
    load_checkpoint,
    load_state_dict,
    state_dict_of,
)

VINDR = "vindr_cxr_cardiomegaly_classification"
TINY = dict(in_channels=1, img_size=(32, 32), patch_size=8, hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2,
            spatial_dims=2, classification=True, num_classes=2)


class _Evil:
    """Unpickling this object creates ``marker`` (``open(marker, "w")``): proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(tmp_path: Path, state: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil_model.pt"
    torch.save({"model": state, "extra": _Evil(marker)}, path)
    return path, marker


def test_evil_checkpoint_runs_code_when_unpickled(tmp_path):
    """The fixture is real: torch.load(weights_only=False) runs its payload (so the tests below can fail)."""
    path, marker = _evil_checkpoint(tmp_path, {"w": torch.zeros(1)})
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_every_load_path_refuses_a_malicious_pickle(tmp_path, caplog):
    """evaluate (report handler), ``monai-ext verify``, ``package``, ``label-app``, ``transfer_weights``: the
    file is refused with its name in the message, and the payload never runs."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    net = ViT(**TINY)
    path, marker = _evil_checkpoint(tmp_path, net.state_dict())

    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: holds pickled Python objects.*io\.open"):
        load_checkpoint(path)
    with pytest.raises(CheckpointMismatchError, match=rf"{path}: holds pickled Python objects"):
        check_checkpoint(path, net)
    evaluator = SupervisedEvaluator(device="cpu", network=net, val_data_loader=DataLoader(
        Dataset([{"image": torch.zeros(1, 32, 32), "label": 0}]), batch_size=1))
    with pytest.raises(CheckpointMismatchError, match=rf"{path}: holds pickled"):
        EvaluationReport(tmp_path / "eval", ckpt_path=path, network=net).attach(evaluator)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: holds pickled"):  # evaluate.yaml's loader
        SafeCheckpointLoader(load_path=str(path), load_dict={"model": net})(evaluator)
    with pytest.raises(CheckpointError, match=rf"{path}: holds pickled"):
        transfer_weights(ViT(**{**TINY, "attention": "softmax_free"}), str(path))
    with pytest.raises(bt.BundleError, match=rf"{path}: holds pickled"):
        bt.load_checkpoint_state(path)

    caplog.set_level(logging.ERROR)
    assert cli_main(["verify", VINDR, "--ckpt", str(path), "--no-onnx"]) == 1
    assert cli_main(["package", VINDR, "--ckpt", str(path), "--out", str(tmp_path / "pkg.zip")]) == 1
    assert cli_main(["label-app", "--out", str(tmp_path / "app"), "--bundle", VINDR, "--ckpt",
                     f"{VINDR}={path}"]) == 1
    assert cli_main(["convert-checkpoint", str(path), str(tmp_path / "safe.pt")]) == 2  # no --trust-pickle
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum(f"{path}: holds pickled Python objects" in m for m in errors) == 3, errors
    assert "convert-checkpoint --trust-pickle" in errors[0]
    assert not (tmp_path / "pkg.zip").exists() and not (tmp_path / "safe.pt").exists()
    assert not marker.exists()


def test_safe_checkpoint_loader_restores_like_monais(tmp_path):
    """``SafeCheckpointLoader`` (the bundles' evaluate.yaml) loads what MONAI's ``CheckpointLoader`` loads: a
    plain state dict into a one-object ``load_dict``, and a multi-object checkpoint by key."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    torch.manual_seed(0)
    trained, fresh = ViT(**TINY), ViT(**TINY)
    evaluator = SupervisedEvaluator(device="cpu", network=fresh, val_data_loader=DataLoader(
        Dataset([{"image": torch.zeros(1, 32, 32), "label": 0}]), batch_size=1))
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    SafeCheckpointLoader(load_path=str(tmp_path / "plain.pt"), load_dict={"model": fresh})(evaluator)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
    other = ViT(**TINY)
    torch.save({"model": other.state_dict(), "epoch": 3}, tmp_path / "multi.pt")
    SafeCheckpointLoader(load_path=str(tmp_path / "multi.pt"), load_dict={"model": fresh})(evaluator)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def test_layouts_and_prefixes(tmp_path):
    """Plain state dict, nested under model / network / state_dict, DDP's ``module.`` prefix, and an ignite
    training checkpoint (network, optimizer, scheduler, trainer) all load weights-only."""
    net = ViT(**TINY)
    ref = net.state_dict()
    layouts = {
        "plain": ref,
        "model": {"model": ref},
        "network": {"network": ref, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}},
        "state_dict": {"state_dict": ref, "epoch": 3},
        "ddp": OrderedDict((f"module.{k}", v) for k, v in ref.items()),
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        state = load_state_dict(tmp_path / f"{name}.pt")
        assert list(state) == list(ref), name
        for k in ref:
            torch.testing.assert_close(state[k], ref[k])
    with pytest.raises(CheckpointError, match=r"x\.pt: no state dict of tensors found"):
        state_dict_of({"epoch": 3, "notes": "x"}, "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt not found"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_ignite_training_checkpoint_is_weights_only(tmp_path):
    """What ignite's ``Checkpoint`` writes for the bundles' training (network, AdamW, CosineAnnealingLR,
    trainer) holds only tensors and plain values, so it loads with weights_only=True and restores."""
    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint, DiskSaver

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)

    def step(engine, batch):
        opt.zero_grad()
        net(torch.randn(2, 3)).sum().backward()
        opt.step()

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    objects = {"network": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(
        objects, DiskSaver(str(tmp_path), require_empty=False), filename_prefix="",
        score_function=lambda e: e.state.epoch, score_name="epoch"))
    trainer.run([0, 1], max_epochs=2)
    ckpt = load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")
    assert ckpt["trainer"]["iteration"] == 4 and ckpt["lr_scheduler"]["last_epoch"] == 2

    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2, weight_decay=0.05)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=4)
    Checkpoint.load_objects({"network": net2, "optimizer": opt2, "lr_scheduler": sched2}, ckpt)
    torch.testing.assert_close(net2.weight, net.weight)
    assert sched2.get_last_lr() == sched.get_last_lr()


class _Legacy:  # a non-tensor object an old training script pickled into its checkpoint
    def __init__(self) -> None:
        self.note = "old"


def test_convert_checkpoint_is_explicit(tmp_path, caplog):
    net = ViT(**TINY)
    src = tmp_path / "old.pt"
    torch.save({"network": net, "spacing": np.array([1.0, 2.0]), "best": np.float64(0.9), "cfg": _Legacy()}, src)
    with pytest.raises(UnsafeCheckpointError, match="old.pt: holds pickled"):
        load_checkpoint(src)
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle=True"):
        convert_checkpoint(src, tmp_path / "new.pt")
    assert not (tmp_path / "new.pt").exists()
    caplog.set_level(logging.WARNING)
    assert cli_main(["convert-checkpoint", "--trust-pickle", str(src), str(tmp_path / "new.pt")]) == 0
    assert any("dropped checkpoint['cfg']" in r.getMessage() and "_Legacy" in r.getMessage() for r in caplog.records)
    new = load_checkpoint(tmp_path / "new.pt")
    assert set(new) == {"network", "spacing", "best"} and new["best"] == pytest.approx(0.9)
    torch.testing.assert_close(new["spacing"], torch.tensor([1.0, 2.0], dtype=torch.float64))
    dst = ViT(**TINY)
    report = transfer_weights(dst, tmp_path / "new.pt")
    assert not report.new and not report.mismatched
    # never overwrites
    assert cli_main(["convert-checkpoint", "--trust-pickle", str(src), str(tmp_path / "new.pt")]) == 1


def test_no_weights_only_false_in_the_package():
    """Only the explicit conversion unpickles: every other ``torch.load`` call in monai_ext is the loader's own
    (found by parsing the code, so strings and comments do not count)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "monai_ext"
    calls = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((path.relative_to(root).as_posix(), kw.get("weights_only")))
    # the loader's own two calls, and the .pt feature files of `monai-ext features` (tensors only, weights_only=True;
    # monai_ext.data may not import monai_ext.utils, so it cannot use the loader)
    assert sorted(calls) == [("data/wsi_features.py", "True"), ("utils/checkpoint.py", "False"),
                             ("utils/checkpoint.py", "True")], calls
    # bundle configs load through SafeCheckpointLoader (MONAI 1.5's CheckpointLoader unpickles)
    configs = sorted((root.parent / "bundles").glob("*/configs/*.yaml"))
    plain = [p.relative_to(root.parent).as_posix() for p in configs
             if re.search(r"_target_:\s*(monai\.handlers\.)?CheckpointLoader\b", p.read_text())]
    assert configs and not plain, plain
