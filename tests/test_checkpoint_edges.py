"""``convert_checkpoint`` on every kind of value an old pickled checkpoint holds, and its refusals;
``state_dict_of`` on what is not a state dict; the transfer summary's parameter names (blind spots found by
mutation testing of ``monai_ext.utils.checkpoint``, see docs/testing.md)."""

from __future__ import annotations

import logging
import pickle
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.utils.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    SafeCheckpointLoader,
    TransferReport,
    UnsafeCheckpointError,
    _torch_reason,
    convert_checkpoint,
    load_checkpoint,
    load_state_dict,
    state_dict_of,
    transfer_weights,
)

LEGACY = f"{__name__}._Legacy"


class _Legacy:
    """A Python object an old training script pickled into its checkpoint (not weights-only data)."""


class _WithExtraState(torch.nn.Linear):
    """A module whose ``state_dict`` carries a Python object (``get_extra_state``)."""

    def get_extra_state(self) -> _Legacy:
        return _Legacy()

    def set_extra_state(self, state: object) -> None:
        pass


def test_convert_checkpoint_keeps_weights_only_values_and_names_what_it_drops(tmp_path, caplog):
    torch.manual_seed(0)
    net = _WithExtraState(3, 2)
    meta = MetaTensor(torch.arange(4.0), meta={"filename_or_obj": "x.nii.gz"})
    src = tmp_path / "old.pt"
    torch.save({
        "network": net,
        "meta": meta,
        "history": [1.5, np.float32(2.5), _Legacy(), torch.ones(2), [np.int64(7), _Legacy()]],
        "shape": (3, _Legacy(), "a"),
        4: "an int key",
        (1, 2): torch.zeros(1),
        "names": np.array(["a", "b"]),
        "flags": np.array([True, False]),
        "plain": {"dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2, 3]), "none": None,
                  "raw": b"\x00", "nested": {"obj": _Legacy()}},
        "last": 1,
    }, src)
    caplog.set_level(logging.INFO)
    dst = tmp_path / "sub" / "dir" / "new.pt"  # missing folders are created
    dropped = convert_checkpoint(src, dst, trust_pickle=True)
    assert dropped == [
        f"checkpoint['network']['_extra_state'] ({LEGACY})",
        f"checkpoint['history'][2] ({LEGACY})",
        f"checkpoint['history'][4][1] ({LEGACY})",
        f"checkpoint['shape'][1] ({LEGACY})",
        "checkpoint[(1, 2)] (key of type tuple)",
        "checkpoint['names'] (numpy.ndarray)",
        f"checkpoint['plain']['nested']['obj'] ({LEGACY})",
    ]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{src}: dropped {d} (not weights-only data)" for d in dropped]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"{src} -> {dst}: weights-only checkpoint written (7 object(s) dropped)" in info
    assert [p.name for p in dst.parent.iterdir()] == ["new.pt"]  # no temporary file left
    new = load_checkpoint(dst)
    assert list(new) == ["network", "meta", "history", "shape", 4, "flags", "plain", "last"]
    assert list(new["network"]) == ["weight", "bias"]
    torch.testing.assert_close(new["network"]["weight"], net.weight.detach())
    assert type(new["meta"]) is torch.Tensor and new["meta"].tolist() == [0.0, 1.0, 2.0, 3.0]
    hist = new["history"]
    assert type(hist) is list and len(hist) == 4 and hist[:2] == [1.5, 2.5] and hist[3] == [7]
    assert type(hist[1]) is float and type(hist[3][0]) is int
    torch.testing.assert_close(hist[2], torch.ones(2))
    assert new["shape"] == (3, "a") and new[4] == "an int key" and new["last"] == 1
    assert new["flags"].dtype == torch.bool and new["flags"].tolist() == [True, False]
    assert new["plain"] == {"dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2, 3]),
                            "none": None, "raw": b"\x00", "nested": {}}


def test_convert_checkpoint_refusals_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing\.pt not found"):
        convert_checkpoint(tmp_path / "missing.pt", tmp_path / "out.pt", trust_pickle=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable PyTorch checkpoint \(UnpicklingError: "):
        convert_checkpoint(tmp_path / "junk.pt", tmp_path / "out.pt", trust_pickle=True)
    torch.save(_Legacy(), tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match=r"object\.pt: holds a _Legacy, nothing that can be stored weights-only"):
        convert_checkpoint(tmp_path / "object.pt", tmp_path / "out.pt", trust_pickle=True)
    assert not (tmp_path / "out.pt").exists()
    torch.save({"w": torch.zeros(1)}, tmp_path / "ok.pt")
    (tmp_path / "taken.pt").write_bytes(b"keep")
    (tmp_path / "link.pt").symlink_to(tmp_path / "nowhere.pt")  # a dangling link is refused too
    for dst in ("taken.pt", "link.pt"):
        with pytest.raises(CheckpointError, match=rf"{dst}: already exists; choose a new output file"):
            convert_checkpoint(tmp_path / "ok.pt", tmp_path / dst, trust_pickle=True)
    assert (tmp_path / "taken.pt").read_bytes() == b"keep" and not (tmp_path / "nowhere.pt").exists()


def test_state_dict_of_refuses_what_is_not_a_state_dict_and_keeps_prefixes_on_request():
    w = torch.ones(2)
    cases = (({}, "top-level keys []"), ([w], "a list"), (w, "a Tensor"),
             ({"model": {}}, "top-level keys ['model']"), ({"model": {"w": 1}}, "top-level keys ['model']"))
    for obj, found in cases:
        with pytest.raises(CheckpointError, match=re.escape(f"x.pt: no state dict of tensors found ({found}; ")):
            state_dict_of(obj, "x.pt")
    with pytest.raises(CheckpointError, match=r"^<checkpoint>: no state dict of tensors found"):
        state_dict_of({"epoch": 3})
    with pytest.raises(CheckpointError, match=re.escape(f"top-level keys {list('abcdefgh')}; looked under")):
        state_dict_of({k: 1 for k in "abcdefghij"}, "x.pt")  # the first 8 keys
    state = {"module._orig_mod.a": w, "_orig_mod.module.b": w, "c": w}
    assert list(state_dict_of(state)) == ["a", "b", "c"]  # nested wrappers, in either order
    kept = state_dict_of({"network": state}, strip_prefixes=False)
    assert type(kept) is dict and list(kept) == list(state) and kept["c"] is w
    assert list(state_dict_of({"net": {"a": w}, "model": {"b": w}})) == ["b"]  # CKPT_KEYS order, not the file's
    assert list(state_dict_of({"weights": {"a": w}, "step": 1}, keys=("weights",))) == ["a"]


def test_transfer_summary_names_the_new_parameters_by_their_last_part():
    report = TransferReport(copied=["head.weight"], new=["scale", "blocks.0.attn.q_gamma", "blocks.1.attn.q_gamma"],
                            mismatched=["head.bias"])
    assert report.summary() == "copied 1 tensors, initialized 3 new (q_gamma, scale), 0 unused, 1 shape-mismatched"


def _engine(max_epochs: int | None = None):
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = max_epochs
    return engine


def _trained(tmp_path):
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    src(torch.randn(2, 3)).sum().backward()
    opt.step()
    trainer = _engine()
    trainer.run([0, 1], max_epochs=5)  # its state dict: epoch 5 of 5
    torch.save({"model": src.state_dict(), "optimizer": opt.state_dict(), "trainer": trainer.state_dict()},
               tmp_path / "nested.pt")
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    return src, opt


def test_safe_checkpoint_loader_strict_shape_false_copies_the_matching_tensors(tmp_path, caplog):
    """A network with another head: the tensors of the same name and shape come from the checkpoint, the others
    keep their initialization, other objects are skipped with a warning; nothing matching is an error."""
    src, _ = _trained(tmp_path)
    caplog.set_level(logging.WARNING)
    for name, with_opt in (("nested.pt", True), ("plain.pt", False), ("plain.pt", True)):
        dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
        init = {k: v.clone() for k, v in dst.state_dict().items()}
        opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
        load_dict = {"model": dst, "optimizer": opt} if with_opt else {"model": dst}
        SafeCheckpointLoader(load_path=str(tmp_path / name), load_dict=load_dict, strict_shape=False)(_engine())
        for k in ("0.weight", "0.bias"):
            torch.testing.assert_close(dst.state_dict()[k], src.state_dict()[k], rtol=0, atol=0)
        for k in ("1.weight", "1.bias"):
            torch.testing.assert_close(dst.state_dict()[k], init[k], rtol=0, atol=0)
        assert not opt.state_dict()["state"]  # the optimizer is not restored
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "strict_shape is False: loading the model only, not 'optimizer'"] * 2
    other = torch.nn.Sequential(torch.nn.Linear(5, 6))
    with pytest.raises(CheckpointMismatchError, match=r"plain\.pt: no tensor matches 'model' by name and shape"):
        SafeCheckpointLoader(load_path=str(tmp_path / "plain.pt"), load_dict={"model": other},
                             strict_shape=False)(_engine())


def test_safe_checkpoint_loader_strict_map_location_and_max_epochs(tmp_path, caplog):
    src, opt = _trained(tmp_path)
    state = {k: v for k, v in src.state_dict().items() if k != "1.bias"}
    torch.save(state, tmp_path / "partial.pt")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="1.bias"):  # strict by default
        SafeCheckpointLoader(load_path=str(tmp_path / "partial.pt"), load_dict={"model": net})(_engine())
    SafeCheckpointLoader(load_path=str(tmp_path / "partial.pt"), load_dict={"model": net}, strict=False)(_engine())
    torch.testing.assert_close(net[1].weight, src[1].weight, rtol=0, atol=0)

    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    SafeCheckpointLoader(load_path=str(tmp_path / "plain.pt"), load_dict={"model": net}, map_location=to_cpu)(_engine())
    assert seen and set(seen) == {"cpu"}
    torch.testing.assert_close(net[1].bias, src[1].bias, rtol=0, atol=0)

    # resuming: the trainer's epoch comes from the checkpoint, its max_epochs stays the engine's own
    trainer = _engine(max_epochs=8)
    opt2 = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with caplog.at_level(logging.INFO):
        SafeCheckpointLoader(load_path=str(tmp_path / "nested.pt"),
                             load_dict={"model": net, "optimizer": opt2, "trainer": trainer})(trainer)
    assert f"Restored all variables from {tmp_path / 'nested.pt'}" in [r.getMessage() for r in caplog.records]
    assert (trainer.state.epoch, trainer.state.max_epochs) == (5, 8)
    done = _engine(max_epochs=5)  # a finished run: epoch 5 of 5 loads
    SafeCheckpointLoader(load_path=str(tmp_path / "nested.pt"), load_dict={"trainer": done})(done)
    assert (done.state.epoch, done.state.max_epochs) == (5, 5)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["momentum_buffer"],
                               opt.state_dict()["state"][0]["momentum_buffer"])
    short = _engine(max_epochs=3)
    with pytest.raises(ValueError, match=r"nested\.pt: epoch count \(5\) in the checkpoint is larger than the "
                                         r"engine's max_epochs \(3\)"):
        SafeCheckpointLoader(load_path=str(tmp_path / "nested.pt"), load_dict={"trainer": short})(short)


def test_load_errors_give_torch_reason_without_its_advice(tmp_path):
    """Each refusal names the file and torch's reason, never torch's advice to set ``weights_only=False``."""
    cases = {
        "build.pt": (b"\x80\x02K\x01}b.", "UnpicklingError: Can only build Tensor, Parameter, OrderedDict"),
        "persid.pt": (b"\x80\x02Pabc\n.", "UnpicklingError: Unsupported operand 80"),
        "empty.pt": (b"", "EOFError: )"),
    }
    torch.save({"w": torch.zeros(1), "x": _Legacy()}, tmp_path / "object.pt")
    for name, (body, text) in cases.items():
        (tmp_path / name).write_bytes(body)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: not a readable PyTorch checkpoint ({text}")
        assert "weights_only` set to `False`" not in str(info.value)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "object.pt")
    assert f"refers to the Python object {LEGACY})" in str(info.value)
    assert f"convert it once with `monai-ext convert-checkpoint --trust-pickle {tmp_path / 'object.pt'} OUT.pt`" \
        in str(info.value)
    # the fallbacks for a message torch did not format: its first line, else the exception's type
    assert _torch_reason(pickle.UnpicklingError("bad data\nmore")) == "bad data"
    assert _torch_reason(pickle.UnpicklingError("  ")) == "UnpicklingError"


def test_load_state_dict_and_map_location(tmp_path):
    w = torch.arange(3.0)
    torch.save({"module.a": w}, tmp_path / "ddp.pt")
    assert list(load_state_dict(tmp_path / "ddp.pt", strip_prefixes=False)) == ["module.a"]
    assert list(load_state_dict(tmp_path / "ddp.pt")) == ["a"]
    torch.save({"epoch": 1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / 'meta.pt'))}: no state dict"):
        load_state_dict(tmp_path / "meta.pt")
    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage

    assert load_checkpoint(tmp_path / "ddp.pt", map_location=to_cpu)["module.a"].tolist() == [0.0, 1.0, 2.0]
    assert seen == ["cpu"]


def test_transfer_weights_reports_and_errors(tmp_path, caplog):
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    state = {**src.state_dict(), "extra.b": torch.zeros(1), "extra.a": torch.zeros(1)}
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3), torch.nn.Linear(2, 2),
                              torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            "<state dict>: checkpoint tensor '1.weight' has shape (2, 4), the network expects (3, 4)")):
        transfer_weights(dst, state)
    torch.save({"model": state}, tmp_path / "src.pt")
    with pytest.raises(CheckpointMismatchError, match=re.escape(f"{tmp_path / 'src.pt'}: checkpoint tensor '1.")):
        transfer_weights(dst, tmp_path / "src.pt")
    with pytest.raises(CheckpointError, match=r"^<state dict>: no state dict of tensors found"):
        transfer_weights(dst, {"epoch": 1})
    caplog.set_level(logging.INFO)
    report = transfer_weights(dst, tmp_path / "src.pt", strict_shapes=False)
    assert report.copied == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert report.new == ["3.weight", "3.bias"] and report.unused == ["extra.a", "extra.b"]
    assert report.mismatched == ["1.weight", "1.bias"]
    torch.testing.assert_close(dst[2].weight, src[2].weight, rtol=0, atol=0)
    assert f"transfer_weights: {report.summary()}" in [r.getMessage() for r in caplog.records]
