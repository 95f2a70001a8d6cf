"""The dataset interface (monai_ext.data.dataset) and the one CLI layer (monai_ext.data.cli): every dataset is a
preparation module plus a synthetic-data module, the dependency points one way, options are declared as data and
reach ``prepare`` / ``synthesize`` under their keyword names."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from monai_ext.cli import build_parser
from monai_ext.cli import main as cli_main
from monai_ext.data.dataset import DATASETS, Dataset, ModuleDataset, Option, get_dataset, moved_attribute

DATA = Path(__file__).resolve().parents[1] / "monai_ext" / "data"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_modules_and_options(name):
    ds = get_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name
    prep = importlib.import_module(f"monai_ext.data.{name}")
    synth = importlib.import_module(f"monai_ext.data.synthetic.{name}")
    # preparation never imports the generators; neither module carries argparse code
    prep_imports = _imports(Path(prep.__file__))
    assert not any(m.startswith("monai_ext.data.synthetic") for m in prep_imports), prep_imports
    assert "argparse" not in prep_imports and "argparse" not in _imports(Path(synth.__file__))
    # every declared option reaches a keyword of the function it is for
    for options, func in ((ds.prepare_options, prep.prepare), (ds.synth_options, synth.synthesize)):
        params = inspect.signature(func).parameters
        for opt in options:
            assert isinstance(opt, Option) and opt.dest in params, (name, opt.flags, list(params))
    assert set(ds.required_splits) <= {"training", "validation", "test"}
    assert ds.classes is None or ds.classes == tuple(range(len(ds.classes))) and len(ds.classes) >= 2


def test_no_data_module_imports_upwards():
    """monai_ext.data depends on nothing of monai_ext outside it (networks, transforms, workflows, reports ...) but
    layer 0, ``monai_ext.utils`` (the pyramidal TIFF writer of the gigapixel synthetic slides)."""
    for path in DATA.rglob("*.py"):
        outside = {m for m in _imports(path) if m.startswith("monai_ext.")
                   and not m.startswith(("monai_ext.data", "monai_ext.utils"))}
        assert not outside, (path, outside)


def test_get_dataset_unknown_name():
    names = ", ".join(f"'{n}'" for n in sorted(DATASETS))
    assert "'btcv', 'duke'" in names and "'vindr_cxr'" in names
    with pytest.raises(ValueError, match=re.escape(f"unknown dataset 'kits'; available: [{names}]")):
        get_dataset("kits")


def test_cli_options_reach_prepare_and_synthesize(tmp_path, monkeypatch):
    """Dataset options parse under their keyword names; ``synth`` passes them (and the dataset default when
    ``--cases`` is omitted) to the generator, ``prepare`` to the preparation."""
    args = build_parser().parse_args(
        ["prepare", "duke", "--raw", "r", "--out", "o", "--out-size", "8", "8", "4", "--ap-crop", "center"]
    )
    assert args.out_size == [8, 8, 4] and args.ap_crop == "center" and args.reader == "pydicom"
    calls = []
    monkeypatch.setattr("monai_ext.data.synthetic.paip.synthesize", lambda out, **kw: calls.append((out, kw)))
    assert cli_main(["synth", "paip", "--out", str(tmp_path), "--size", "512"]) == 0
    assert calls == [(tmp_path, {"seed": 0, "size": 512, "workers": 1})]
    seen = {}

    def fake_prepare(raw, out, **kw):
        seen.update(kw)
        return {"training": [{"image": "a"}], "validation": [{"image": "b"}]}

    monkeypatch.setattr("monai_ext.data.btcv.prepare", fake_prepare)
    argv = ["prepare", "btcv", "--raw", str(tmp_path), "--out", str(tmp_path / "o"), "--size", "8", "8", "-1"]
    assert cli_main(argv) == 0
    assert seen == {
        "overwrite": False,
        "seed": 0,
        "size": [8, 8, -1],
        "spacing": None,
        "orientation": "RAS",
        "affine_tol": 1e-2,
        "workers": 1,
        "protocol": "24-6",
    }


def test_synthesize_through_the_interface_marks_the_generator(tmp_path):
    get_dataset("vindr_cxr").synthesize(tmp_path, cases=2, seed=1)
    marker = json.loads((tmp_path / "SYNTHETIC.json").read_text())
    assert marker["generator"] == "monai_ext.data.synthetic.vindr_cxr.synthesize" and marker["cases"] == 2
    gen = marker["generator"].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(gen[0]), gen[1]))


def test_moved_names_still_found_with_a_warning():
    from monai_ext.data import btcv, dicom, duke, paip, vindr_cxr
    from monai_ext.data.synthetic import btcv as s_btcv
    from monai_ext.data.synthetic import dicom as s_dicom
    from monai_ext.data.synthetic import duke as s_duke
    from monai_ext.data.synthetic import paip as s_paip
    from monai_ext.data.synthetic import vindr_cxr as s_vindr

    for old, new, name in (
        (btcv, s_btcv, "synthesize"),
        (paip, s_paip, "synth_slide"),
        (duke, s_duke, "synthesize"),
        (vindr_cxr, s_vindr, "DX_STORAGE"),
        (dicom, s_dicom, "make_uid"),
    ):
        with pytest.warns(DeprecationWarning, match=rf"{old.__name__}\.{name} moved to {new.__name__}\.{name}"):
            assert getattr(old, name) is getattr(new, name)
    with pytest.raises(AttributeError, match="has no attribute 'prepare_slides'"):
        _ = paip.prepare_slides
    with pytest.raises(AttributeError):
        moved_attribute("m", "monai_ext.data.synthetic.btcv", ("synthesize",), "other")


def test_module_dataset_default_cases(tmp_path, monkeypatch):
    """``cases=None`` leaves the generator's own default; the CLI's ``--cases`` overrides it."""
    calls = []
    monkeypatch.setattr("monai_ext.data.synthetic.btcv.synthesize", lambda out, **kw: calls.append(kw))
    ds = ModuleDataset("btcv", "monai_ext.data.btcv", "monai_ext.data.synthetic.btcv")
    ds.synthesize(tmp_path)
    ds.synthesize(tmp_path, cases=3, seed=2, size=(8, 8, 4))
    assert calls == [{"seed": 0}, {"cases": 3, "seed": 2, "size": (8, 8, 4)}]
