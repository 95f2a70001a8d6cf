"""``convert_checkpoint`` on every kind of value an old pickled checkpoint holds, and its refusals;
``state_dict_of`` on what is not a state dict; the transfer summary's parameter names (blind spots found by
mutation testing of ``monai_ext.utils.checkpoint``, see docs/testing.md)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.utils.checkpoint import (
    CheckpointError,
    TransferReport,
    convert_checkpoint,
    load_checkpoint,
    state_dict_of,
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
