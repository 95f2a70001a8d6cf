"""Unit tests of the bundle support library (monai_ext.workflows)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from resume_utils import assert_same_run_state

from monai_ext.networks import APFUNETR
from monai_ext.transforms import quadtree_patch, quadtree_unpatch
from monai_ext.workflows import (
    APFInferer,
    DatasetError,
    PrepareAPFBatch,
    check_datalist,
    latest_checkpoint,
    load_datalist,
    rank_zero_handlers,
)


def _nifti(path, arr):
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def _seg_dataset(tmp_path, label_shape=(8, 8, 4), label_max=2):
    (tmp_path / "img").mkdir(parents=True)
    entries = []
    for i in range(2):
        _nifti(tmp_path / "img" / f"i{i}.nii.gz", np.zeros((8, 8, 4), np.float32))
        lab = np.zeros(label_shape if i == 1 else (8, 8, 4), np.uint8)
        lab[0, 0, 0] = label_max if i == 1 else 1
        _nifti(tmp_path / "img" / f"l{i}.nii.gz", lab)
        entries.append({"image": f"img/i{i}.nii.gz", "label": f"img/l{i}.nii.gz"})
    (tmp_path / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries[:1]}))
    return tmp_path


def test_check_datalist_segmentation_ok(tmp_path):
    root = _seg_dataset(tmp_path)
    assert check_datalist(root, task="segmentation", num_classes=3) == {"training": 2, "validation": 1}
    items = load_datalist(root, "training")
    assert items[0]["image"] == str(root / "img" / "i0.nii.gz")


def test_check_datalist_label_shape_and_values(tmp_path):
    root = _seg_dataset(tmp_path / "a", label_shape=(8, 8, 5))
    with pytest.raises(DatasetError, match=r"l1.nii.gz: label shape \(8, 8, 5\) differs from image i1.nii.gz"):
        check_datalist(root, task="segmentation", num_classes=3)
    root = _seg_dataset(tmp_path / "b", label_max=7)
    with pytest.raises(DatasetError, match=r"l1.nii.gz: label values \[7\] outside the declared classes 0..2"):
        check_datalist(root, task="segmentation", num_classes=3)


def test_check_datalist_missing_and_empty(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        check_datalist(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        check_datalist(tmp_path / "empty")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "datalist.json").write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(DatasetError, match="split 'training' is empty"):
        check_datalist(tmp_path / "d")


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for n in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={n}.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=10.pt"


def test_rank_zero_handlers_single_process():
    from monai.handlers import StatsHandler

    hs = [StatsHandler(), object()]
    assert rank_zero_handlers(hs) == hs  # not distributed: rank 0 keeps everything
    assert rank_zero_handlers(None) is None


def test_apf_inferer_matches_manual_slice_loop():
    torch.manual_seed(0)
    net = APFUNETR(1, 3, num_tokens=36, patch_size=4, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=4,
                   num_layers=2).eval()
    vol = torch.rand(1, 1, 40, 64, 3) * 255
    inf = APFInferer(patch_size=4, num_tokens=36, min_size=4, batch_size=2)
    with torch.no_grad():
        out = inf(vol, net)
        assert out.shape == (1, 3, 40, 64, 3)
        for z in range(3):
            grid, meta = quadtree_patch(vol[0, ..., z].numpy(), patch_size=4, num_tokens=36, min_size=4)
            logits = net(torch.from_numpy(grid)[None].float(), torch.from_numpy(meta["mask"])[None])
            ref = quadtree_unpatch(logits[0], meta)
            torch.testing.assert_close(out[0, ..., z], ref, atol=1e-5, rtol=1e-5)


def test_prepare_apf_batch_passes_mask():
    batch = {"image": torch.zeros(2, 1, 8, 8), "label": torch.zeros(2, 1, 8, 8),
             "image_apf": {"mask": torch.tensor([[True, False], [True, True]]), "leaves": torch.zeros(2, 2, 3)}}
    image, label, args, kwargs = PrepareAPFBatch()(batch, "cpu")
    assert set(kwargs) == {"mask"} and args == ()
    assert kwargs["mask"].dtype == torch.bool and kwargs["mask"].tolist() == [[True, False], [True, True]]


def _tiny_trainer(ckpt_dir, resume=False, epochs=2):
    from monai.engines import SupervisedTrainer

    from monai_ext.workflows import ResumableCheckpoint

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)  # per-parameter state that a resume must keep
    data = [{"image": torch.randn(2, 4), "label": torch.tensor([0, 1])} for _ in range(3)]
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net,
                                optimizer=opt, loss_function=torch.nn.CrossEntropyLoss())
    ResumableCheckpoint(ckpt_dir, {"network": net, "optimizer": opt}, resume=resume).attach(trainer)
    return trainer, net


def test_resumable_checkpoint_saves_and_resumes(tmp_path):
    trainer, _ = _tiny_trainer(tmp_path)
    trainer.run()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint_epoch=2.pt", "run.json"]  # newest only, nothing left over
    trainer2, _ = _tiny_trainer(tmp_path, resume=True, epochs=3)
    trainer2.run()
    assert trainer2.state.epoch == 3 and trainer2.state.iteration == 9  # went on from epoch 2
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=3.pt"]
    ref, _ = _tiny_trainer(tmp_path / "ref", epochs=3)
    ref.run()
    # weights and SGD momentum buffers equal those of the uninterrupted run, exactly
    assert_same_run_state(tmp_path / "checkpoint_epoch=3.pt", tmp_path / "ref" / "checkpoint_epoch=3.pt")


def test_resumable_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A process dying while a checkpoint is written must not leave a truncated ``checkpoint_epoch=N.pt``
    that a later ``--resume`` would pick (simulated: torch.save writes part of the file, then fails)."""
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)
        raise KeyboardInterrupt("killed while writing")

    trainer, _ = _tiny_trainer(tmp_path, epochs=1)
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert not list(tmp_path.glob("checkpoint_epoch=*.pt"))
