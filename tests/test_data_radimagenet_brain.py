"""RadImageNet brain MRI: the layout, preparation (stratified split, skips, errors) and the synthetic generator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from monai_ext.data.common import DataError
from monai_ext.data.dataset import get_dataset, prepare_checked
from monai_ext.data.radimagenet_brain import CLASS_FOLDERS, MODALITY_DIR, class_key, stratified_split
from monai_ext.data.synthetic.radimagenet_brain import class_counts, synth_slice


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("rin_raw")
    get_dataset("radimagenet_brain").synthesize(out, cases=40, seed=0, size=48, min_per_class=3)
    return out


def test_class_counts_follow_table_1():
    counts = class_counts(44671 + 60, min_per_class=6)
    for name, (_, table) in CLASS_FOLDERS.items():
        assert abs(counts[name] - 6 - table) <= 1, name
    assert set(class_counts(100, balanced=True).values()) == {10}


def test_prepare_synthetic_layout(raw, tmp_path):
    datalist = prepare_checked("radimagenet_brain", raw, tmp_path / "prep", resolutions=[32, 40])
    marker = json.loads((raw / "SYNTHETIC.json").read_text())
    files = {name: sorted((raw / MODALITY_DIR / name).iterdir()) for name in CLASS_FOLDERS}
    assert sum(len(v) for v in files.values()) == marker["cases"] == sum(len(v) for v in datalist.values())
    for split in ("training", "validation", "test"):
        assert {e["label"] for e in datalist[split]} == set(range(10)), split  # every class in every split
    for e in datalist["training"]:
        assert CLASS_FOLDERS[e["class_name"]][0] == e["label"]
        assert e["source"].startswith(f"MR/brain/{e['class_name']}/")
        assert (tmp_path / "prep" / e["image_40"]).is_file()
    normal = [e for s in datalist.values() for e in s if e["class_name"] == "normal"]
    assert sum(e in datalist["training"] for e in normal) == round(0.75 * len(normal))
    meta = json.loads((tmp_path / "prep" / "datalist_32.json").read_text())
    assert meta["num_classes"] == 10 and meta["classes"]["8"] == "pituitary_lesion" and meta["data_origin"]


def test_folder_names_errors_and_skips(raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    base = copy / MODALITY_DIR
    (base / "pituitary_lesion").rename(base / "Pituatary lesion")  # the benchmark's spelling
    (base / "edema" / "notes.txt").write_text("not an image")
    (base / "edema" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    datalist = prepare_checked("radimagenet_brain", copy, tmp_path / "prep", resolutions=[32])
    assert sum(e["label"] == 8 for s in datalist.values() for e in s) == 3
    skipped = json.loads((tmp_path / "prep" / "skipped.json").read_text())
    assert len(skipped) == 2 and "notes.txt" in json.dumps(skipped) and "broken.png" in json.dumps(skipped)
    (base / "tumour").mkdir()
    with pytest.raises(DataError, match=r"unknown class folder\(s\) \['tumour'\]"):
        prepare_checked("radimagenet_brain", copy, tmp_path / "prep2", resolutions=[32])
    with pytest.raises(DataError, match="folder not found"):
        prepare_checked("radimagenet_brain", copy, tmp_path / "prep3", modality_dir="CT/brain")


def test_stratified_split_and_names():
    assert class_key("White Matter-Changes") == "white_matter_changes" and class_key("Pituatary lesion") == \
        "pituitary_lesion"
    ids = {"a": [f"a{i}" for i in range(3)], "b": [f"b{i}" for i in range(100)]}
    assign = stratified_split(ids, seed=1)
    assert sorted(assign[i] for i in ids["a"]) == ["test", "training", "validation"]
    assert [sum(assign[i] == s for i in ids["b"]) for s in ("training", "validation", "test")] == [75, 10, 15]
    assert stratified_split(ids, seed=1) == assign != stratified_split(ids, seed=2)


def test_synthetic_findings_differ_from_normal():
    """Each finding changes the slice beyond the seed's own anatomy (same rng draws up to the finding)."""
    normal = synth_slice(np.random.default_rng(3), "normal", 64).astype(float)
    for name in CLASS_FOLDERS:
        if name != "normal":
            diff = np.abs(synth_slice(np.random.default_rng(3), name, 64).astype(float) - normal)
            assert diff.max() > 40, name
    with pytest.raises(ValueError, match="unknown finding"):
        synth_slice(np.random.default_rng(0), "glioma", 64)
