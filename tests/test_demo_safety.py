"""``monai-ext demo`` never deletes what it did not create (issue 13, item 2): it writes synthetic data only
into folders it owns (marker first, then a manifest), refuses a folder with foreign content and says so, and
moves an earlier ``eval/`` aside instead of overwriting it."""

from __future__ import annotations

import json
import logging
import os

import pytest

from monai_ext import demo
from monai_ext.cli import main as cli_main
from monai_ext.demo import (
    DEMO_MARKER,
    DemoFolder,
    FolderNotOwned,
    demo_data,
    move_aside,
)


def _bundle(tmp_path):
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.yaml").write_text("{}\n")
    return root


def test_demo_refuses_foreign_file_in_data_folder(tmp_path, monkeypatch, caplog):
    """The reported defect: a user's slide and notes in data/raw were deleted by the demo."""
    root = _bundle(tmp_path)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "my_slide.svs").write_bytes(b"precious")
    (raw / "notes.txt").write_text("mine")
    (root / "data" / "prepared").mkdir()
    (root / "data" / "prepared" / "datalist.json").write_text("{}")
    called = []
    monkeypatch.setattr("monai_ext.data.synthetic.paip.synthesize", lambda *a, **k: called.append(a))
    with pytest.raises(FolderNotOwned, match=r"2 file\(s\) the demo did not create \(my_slide.svs, notes.txt\)"):
        demo.run_bundle_demo("apf_unetr_paip_segmentation", root=root)
    assert (raw / "my_slide.svs").read_bytes() == b"precious" and (raw / "notes.txt").read_text() == "mine"
    assert (root / "data" / "prepared" / "datalist.json").read_text() == "{}"
    assert not called and not (raw / DEMO_MARKER).exists()
    # through the command line: exit 1, one line naming the folder
    monkeypatch.setattr(demo, "bundles_dir", lambda: tmp_path)
    (tmp_path / "bundle").rename(tmp_path / "apf_unetr_paip_segmentation")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli_main(["demo", "--bundle", "apf_unetr_paip_segmentation"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "data/raw holds 2 file(s) the demo did not create" in errors[0]
    assert (tmp_path / "apf_unetr_paip_segmentation" / "data" / "raw" / "my_slide.svs").exists()


def test_demo_folder_lifecycle(tmp_path):
    f = DemoFolder(tmp_path / "raw")
    assert f.claim({"seed": 0}) is False  # fresh: marker first
    assert json.loads(f.marker.read_text())["state"] == "writing"
    (f.path / "sub").mkdir()
    (f.path / "sub" / "a.nii.gz").write_text("a")
    (f.path / "b.csv").write_text("b")
    f.seal()
    assert f.state()["files"] == ["b.csv", "sub/a.nii.gz"]
    assert f.claim({"seed": 0}) is True  # same settings: reused, nothing removed
    assert (f.path / "b.csv").exists()
    assert f.claim({"seed": 1}) is False  # other settings: exactly its own files removed
    assert not (f.path / "b.csv").exists() and not (f.path / "sub").exists()
    (f.path / "c.csv").write_text("c")
    f.seal()
    (f.path / "user.txt").write_text("user")  # a file added later is foreign
    with pytest.raises(FolderNotOwned, match="user.txt"):
        f.claim({"seed": 2})
    assert (f.path / "c.csv").exists() and (f.path / "user.txt").exists()


def test_interrupted_demo_owns_only_files_written_after_its_marker(tmp_path):
    f = DemoFolder(tmp_path / "raw")
    f.path.mkdir()
    (f.path / "old.txt").write_text("user")  # older than the marker: not the demo's
    os.utime(f.path / "old.txt", ns=(1_000_000_000, 1_000_000_000))
    f._write({"owner": "monai-ext demo", "state": "writing", "stamp": {}, "started_ns": 2_000_000_000})
    (f.path / "half.dcm").write_text("x")  # written by the interrupted run
    with pytest.raises(FolderNotOwned, match="old.txt"):
        f.check()
    (f.path / "old.txt").rename(tmp_path / "old.txt")
    assert f.claim({"seed": 0}) is False and not (f.path / "half.dcm").exists()


def test_demo_data_regenerates_only_its_own_files(tmp_path):
    root = _bundle(tmp_path)
    prepared = demo_data(root, "btcv", cases=3, seed=0, prep_opts={"size": [16, 16, -1]})
    body = json.loads((prepared / "datalist.json").read_text())
    assert body["data_origin"]["synthetic"] is True and len(body["training"]) == 2
    raw = root / "data" / "raw"
    stamp_before = json.loads((raw / DEMO_MARKER).read_text())["completed_ns"]
    demo_data(root, "btcv", cases=3, seed=0, prep_opts={"size": [16, 16, -1]})  # reused
    assert json.loads((raw / DEMO_MARKER).read_text())["completed_ns"] == stamp_before
    (prepared / "my_notes.md").write_text("keep")
    with pytest.raises(FolderNotOwned, match="my_notes.md"):
        demo_data(root, "btcv", cases=3, seed=1, prep_opts={"size": [16, 16, -1]})
    # refused before anything changed: the raw data of seed 0 are still there
    assert json.loads((raw / DEMO_MARKER).read_text())["completed_ns"] == stamp_before
    assert (prepared / "my_notes.md").read_text() == "keep"


def test_move_aside_keeps_previous_eval(tmp_path):
    ev = tmp_path / "eval"
    assert move_aside(ev) is None
    ev.mkdir()
    (ev / "metrics.json").write_text("1")
    (ev / "inference").mkdir()
    first = move_aside(ev)
    assert (first / "metrics.json").read_text() == "1" and (first / "inference").is_dir()
    assert sorted(p.name for p in ev.iterdir()) == ["previous"]
    (ev / "metrics.json").write_text("2")
    second = move_aside(ev)
    assert second != first and (second / "metrics.json").read_text() == "2" and first.is_dir()
