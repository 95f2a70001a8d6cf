"""Errors about the user's input reach the user as the last lines of a ``python -m monai.bundle run``: the file
and the problem, not 50-260 lines of traceback ending in ``RuntimeError: Failed to evaluate ConfigExpression``
(issue 13 item 5); the exit status stays non-zero; ``MONAI_EXT_DEBUG=1`` shows the traceback."""

from __future__ import annotations

import json

import pytest
import torch
from bundle_utils import BUNDLES, run_bundle

from monai_ext.data import vindr_cxr
from monai_ext.data.slide import SlideError
from monai_ext.workflows import DatasetError, ResumeError, entry

VINDR = BUNDLES / "vindr_cxr_cardiomegaly_classification"


def _chained(err: Exception) -> RuntimeError:
    """``err`` wrapped as MONAI's config parser does."""
    try:
        try:
            raise err
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $check(...)") from e
    except RuntimeError as wrapped:
        return wrapped


@pytest.mark.parametrize("debug", ["", "1"])
def test_hook_prints_the_user_error_last(capsys, monkeypatch, debug):
    monkeypatch.setenv(entry.DEBUG_ENV, debug)
    calls = []
    hook = entry._hook(lambda *a: calls.append(a))
    exc = _chained(DatasetError("dataset /d has 1 problem(s):\n  /d/a.png: image file missing"))
    hook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1] == "  /d/a.png: image file missing"
    assert "Failed to evaluate" not in err
    assert len(calls) == (1 if debug else 0)  # the full traceback only on request

    other = _chained(KeyError("not the user's input"))
    hook(type(other), other, other.__traceback__)
    assert len(calls) == (2 if debug else 1)  # anything else: Python's usual traceback
    assert entry.user_error_in(_chained(ResumeError("x"))) is not None
    # a data error raised while a transform reads a file (e.g. a slide tile that cannot be decoded, during the
    # cache fill of a gigapixel run) is the user's too: MONAI wraps it in "applying transform"
    slide = _chained(SlideError("/d/s.svs", "level 0 tile 3 cannot be decoded (ValueError: truncated)"))
    hook(type(slide), slide, slide.__traceback__)
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == (
        "/d/s.svs: level 0 tile 3 cannot be decoded (ValueError: truncated)")


def _last_lines(text: str, n: int) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


def test_running_as_bundle():
    assert entry.running_as_bundle("/venv/lib/python3.11/site-packages/monai/bundle/__main__.py")
    assert not entry.running_as_bundle("/venv/bin/pytest")


@pytest.mark.parametrize("configs", [["train.yaml"], ["train.yaml", "evaluate.yaml"]])
def test_dataset_error_is_the_last_line(tmp_path, configs):
    """Training (``initialize`` calls ``setup_run``) and evaluation (the hook comes with the import of
    ``monai_ext.workflows`` under ``python -m monai.bundle``)."""
    data = tmp_path / "data"
    data.mkdir()
    entries = [{"image": f"images_64/{i}.png", "label": i % 2} for i in range(2)]
    splits = {"training": entries, "validation": entries, "test": entries}
    (data / "datalist_64.json").write_text(json.dumps(splits))
    io = {"dataset_dir": str(data), "ckpt_dir": str(tmp_path / "models"), "log_dir": str(tmp_path / "logs"),
          "output_dir": str(tmp_path / "eval"), "image_size": 64, "num_workers": 0}
    proc = run_bundle(VINDR, configs, "training" if len(configs) == 1 else "run", check=False, **io)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    want = (
        f"  {data / 'images_64' / '1.png'}: image file missing (listed in {data / 'datalist_64.json'} [validation][1])"
    )
    assert _last_lines(proc.stderr, 1) == [want], proc.stderr[-3000:]
    assert "Traceback" not in out and "Failed to evaluate" not in out
    assert not (tmp_path / "models").exists()


def test_resume_of_another_run_is_refused_last_line(tmp_path):
    """A checkpoint of another run in ``models/``: ``--resume true`` stops before training, naming that run,
    and writes nothing."""
    vindr_cxr.synthesize(tmp_path / "raw", cases=16, seed=0)
    vindr_cxr.prepare(tmp_path / "raw", tmp_path / "prepared", resolutions=[64])
    models = tmp_path / "models"
    models.mkdir()
    stale = {"run": {"run_id": "20260101-000000-0a0a0a", "config_hash": "0a0a0a0a0a0a", "parts": {}, "max_epochs": 2},
             "trainer": {"epoch_length": 3, "max_epochs": 2, "iteration": 6}}
    torch.save(stale, models / "checkpoint_epoch=2.pt")
    proc = run_bundle(VINDR, ["train.yaml"], "training", check=False, dataset_dir=str(tmp_path / "prepared"),
                      ckpt_dir=str(models), log_dir=str(tmp_path / "logs"), image_size=64, epochs=2, num_workers=0,
                      resume=True)
    assert proc.returncode != 0
    last = _last_lines(proc.stderr, 1)[0]
    assert last.startswith(f"cannot resume: {models / 'checkpoint_epoch=2.pt'} belongs to run 20260101-000000-0a0a0a")
    assert "leave out `--resume true`" in last
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=2.pt"]  # nothing trained or moved
