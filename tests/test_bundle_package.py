"""``monai-ext package``: the zip is a self-contained model-zoo bundle.

The monai_ext code the configs need is vendored into ``scripts/`` (found by following imports, rewritten to
import ``scripts``), the packaged configs point at it, the metadata lists installable requirements (no
monai_ext, no pin of this machine's releases) in the zoo's 4-space JSON, and the packaged configs build their
networks in a subprocess that cannot import monai_ext. End to end: a packaged bundle runs its inference.yaml
without monai_ext and gives the numbers monai_ext gives. The fresh-venv check (MONAI and the listed
requirements only) is ``bash scripts/check_packaged.sh B.zip`` (docs/packaging.md).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from monai_ext.bundle import BUNDLE_NAMES, BundleError, package_bundle, vendor
from monai_ext.bundle.package import _large_files_yaml, copy_bundle_content, vendor_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = ROOT / "bundles"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
TINY = {"hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4, "dim_head": None, "feature_size": 4}
#: a child interpreter in which importing monai_ext fails
FORBID = ("import sys, importlib.abc\n"
          "class Forbid(importlib.abc.MetaPathFinder):\n"
          "    def find_spec(self, name, path=None, target=None):\n"
          "        if name.split('.')[0] == 'monai_ext':\n"
          "            raise ImportError('monai_ext is forbidden here: ' + name)\n"
          "sys.meta_path.insert(0, Forbid())\n")
#: import statements of monai_ext, and dotted monai_ext names, written independently of vendor.py's patterns
IMPORT_LINE = re.compile(r"^\s*(from\s+monai_ext\b|import\s+monai_ext\b)", re.MULTILINE)


def _vendored(bundle: str, dest: Path) -> tuple[Path, dict]:
    out = dest / bundle
    out.mkdir(parents=True)
    copy_bundle_content(BUNDLES_DIR / bundle, out)
    return out, vendor_bundle(BUNDLES_DIR / bundle, out)


def test_rewrite_source_and_config():
    src = ("from monai_ext.networks.vit import ViT\nimport monai_ext.utils.checkpoint as ck\n"
           "from monai_ext import networks\n    from monai_ext.reports import write_report  # lazy\n"
           "from .attention import x\nname = 'monai_ext.data.synthetic.duke'\n'''monai_ext developers'''\n")
    out = vendor.rewrite_source(src)
    assert out == ("from scripts.networks.vit import ViT\nimport scripts.utils.checkpoint as ck\n"
                   "from scripts import networks\n    from scripts.reports import write_report  # lazy\n"
                   "from .attention import x\nname = 'scripts.data.synthetic.duke'\n'''monai_ext developers'''\n")
    cfg = "imports:\n  - $import monai_ext\n  - $import monai_ext.workflows\nnet:\n  _target_: monai_ext.networks.ViT\n"
    assert vendor.rewrite_config(cfg) == ("imports:\n  - $import scripts\n  - $import scripts.workflows\nnet:\n"
                                          "  _target_: scripts.networks.ViT\n")


def test_requirements_are_ranges_monai_ext_declares():
    declared = vendor.declared_requirements()
    specs = vendor.distribution_specs({"PIL", "ignite"}, {"monai_ext": "0.1.0", "pydicom": "2.4.4",
                                                          "numpy": "1.26.4", "not-declared-here": "1.2"})
    assert "monai_ext" not in specs and "numpy" not in specs  # numpy has its own metadata field
    assert specs["pillow"] == declared["pillow"] and specs["pillow"].startswith(">=")  # not this machine's pin
    assert specs["pytorch-ignite"] == declared["pytorch-ignite"]
    # the security floor wins over the metadata's older pin; lower bound first, as the zoo's script needs
    assert specs["pydicom"].startswith(">=2.4.5") and "!=3.0.0" in specs["pydicom"]
    assert specs["not-declared-here"] == "1.2"
    with pytest.raises(BundleError, match="no_such_module_xyz.*no installed distribution"):
        vendor.distribution_specs({"no_such_module_xyz"}, {})


def test_closure_follows_imports():
    refs = vendor.config_references(BUNDLES_DIR / "vindr_cxr_cardiomegaly_classification" / "configs")
    assert "monai_ext.networks.ViT" in refs and "monai_ext.reports.EvaluationReport" in refs
    modules, third = vendor.module_closure(refs)
    # what the configs name, what those import, the lazily exported report handler, parent packages
    for need in ("monai_ext", "monai_ext.networks", "monai_ext.networks.vit", "monai_ext.networks.attention",
                 "monai_ext.networks.sfn_kernel", "monai_ext.utils.checkpoint", "monai_ext.reports.handler",
                 "monai_ext.workflows.inference"):
        assert need in modules, need
    # nothing the configs do not reach: tools, command lines, data preparation
    for not_needed in ("monai_ext.bundle", "monai_ext.bench", "monai_ext.cli", "monai_ext.data.dicom",
                       "monai_ext.demo", "monai_ext.reports.cli"):
        assert not_needed not in modules, not_needed
    assert {"torch", "monai", "PIL", "ignite"} <= set(third) and "os" not in third


def test_packaged_configs_run_without_monai_ext(tmp_path):
    """Every bundle vendored: no monai_ext left, metadata in 4-space JSON with ranges, and in a child that cannot
    import monai_ext the packaged inference.yaml builds network_def from scripts/ and runs it."""
    dests = {}
    for bundle in BUNDLE_NAMES:
        dest, reqs = _vendored(bundle, tmp_path)
        dests[bundle] = dest
        assert (dest / "scripts" / "__init__.py").is_file()
        assert vendor.leftover_references(dest) == []
        for path in dest.rglob("*.py"):
            assert not IMPORT_LINE.search(path.read_text()), path
        for path in (dest / "configs").glob("*.yaml"):
            assert "monai_ext." not in path.read_text() and "import monai_ext" not in path.read_text(), path
        text = (dest / "configs" / "metadata.json").read_text()
        meta = json.loads(text)
        assert text == json.dumps(meta, indent=4) + "\n"  # the zoo's pretty-format-json, key order kept
        assert meta["required_packages_version"] == reqs
        assert "monai_ext" not in reqs and {"fire", "pyyaml"} <= set(reqs)  # python -m monai.bundle, YAML configs
        assert all(v[0] in "<>=" for v in reqs.values()), reqs
        listed = json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())
        assert set(listed["required_packages_version"]) - {"monai_ext"} <= set(reqs)  # nothing dropped

    child = FORBID + (
        "import json, sys, torch\nfrom monai.bundle import ConfigParser\nout = {}\n"
        "for bundle, dest in json.loads(sys.argv[1]).items():\n"
        "    for name in [m for m in sys.modules if m == 'scripts' or m.startswith('scripts.')]:\n"
        "        del sys.modules[name]\n"
        "    sys.path.insert(0, dest)\n"
        "    p = ConfigParser()\n"
        "    p.read_config(dest + '/configs/inference.yaml')\n"
        "    p.read_meta(dest + '/configs/metadata.json')\n"
        "    p['bundle_root'] = dest\n"
        "    cpu = p.get('presets#cpu')  # None: presets kept in the network (PyramidTransformer's cpu is tiny)\n"
        "    if cpu is not None:\n"
        "        p['presets#tiny'] = {k: json.loads(sys.argv[2]).get(k, v) for k, v in cpu.items()}\n"
        "        p['preset'] = 'tiny'\n"
        "    net = p.get_parsed_content('network_def').eval()\n"
        "    pre = p.get_parsed_content('preprocessing')\n"
        "    n_in = p.get('_meta_#network_data_format#inputs#image#num_channels')\n"
        "    side = int(net.num_tokens ** 0.5) * net.patch_size if hasattr(net, 'num_tokens') else None\n"
        "    shape = [side, side] if side else p.get('_meta_#network_data_format#inputs#image#spatial_shape')\n"
        "    with torch.no_grad():\n"
        "        y = net(torch.rand(1, n_in, *shape))\n"
        "    out[bundle] = [type(net).__module__, sys.modules['scripts'].__file__, list(y.shape),\n"
        "                   'monai_ext' in sys.modules]\n"
        "    sys.path.remove(dest)\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", child, json.dumps({b: str(d) for b, d in dests.items()}),
                           json.dumps(TINY)], capture_output=True, text=True, timeout=600, env=ENV, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for bundle, (module, scripts_file, shape, has_monai_ext) in result.items():
        assert module.startswith("scripts.networks."), (bundle, module)
        assert scripts_file == str(dests[bundle] / "scripts" / "__init__.py")
        assert shape[0] == 1 and not has_monai_ext


def _write_png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((96, 80)) * 255).astype(np.uint8)).save(path)


def test_package_runs_unzipped_without_monai_ext(tmp_path):
    """The zip end to end: layout, no large_files.yml without --url-base (the one written with it: url and sha256
    of each model file), and inference.yaml run in the unzipped folder by a child that cannot import monai_ext gives the
    probabilities of monai_ext's own bundle with the same weights."""
    bundle = "vindr_cxr_cardiomegaly_classification"
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / bundle / "configs" / "inference.yaml"))
    torch.manual_seed(3)
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "trained.pt"
    torch.save(net.state_dict(), ckpt)
    out = package_bundle(BUNDLES_DIR / bundle, tmp_path / "pkg.zip", ckpt=ckpt)
    names = set(zipfile.ZipFile(out).namelist())
    for need in ("configs/metadata.json", "configs/inference.yaml", "configs/train.yaml", "docs/README.md",
                 "docs/data_license.txt", "LICENSE", "models/model.pt", "models/model.ts", "scripts/__init__.py",
                 "scripts/networks/vit.py"):
        assert f"{bundle}/{need}" in names, need
    assert f"{bundle}/large_files.yml" not in names  # no URL known: the zoo would fail on an empty one
    assert not any("/data/" in n and "/scripts/" not in n or "/eval/" in n or "__pycache__" in n for n in names)
    unz = tmp_path / "elsewhere"
    zipfile.ZipFile(out).extractall(unz)
    unz = unz / bundle
    assert (unz / "models" / "model.pt").read_bytes() == ckpt.read_bytes()
    assert "END OF TERMS AND CONDITIONS" in (unz / "LICENSE").read_text()

    images = [tmp_path / f"cxr{i}.png" for i in range(2)]
    for i, p in enumerate(images):
        _write_png(p, i)
    child = FORBID + ("import runpy\nsys.argv = ['monai.bundle', 'run', '--config_file', 'configs/inference.yaml',"
                      " '--input_files', sys.argv[1], '--output_dir', sys.argv[2]]\n"
                      "runpy.run_module('monai.bundle', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", child, json.dumps([str(p) for p in images]), str(tmp_path / "pred")],
                          cwd=unz, capture_output=True, text=True, timeout=600, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {Path(r[0]).stem: [float(v) for v in r[1:]] for r in csv.reader((tmp_path / "pred" /
                                                                           "predictions.csv").open())}
    pre = parser.get_parsed_content("preprocessing")  # monai_ext's own bundle, in this process
    for p in images:
        with torch.no_grad():
            prob = torch.softmax(net(pre({"image": str(p)})["image"].as_tensor()[None]), dim=1)[0].numpy()
        np.testing.assert_allclose(rows[p.stem], prob, atol=1e-5)

    # with --url-base: large_files.yml names where each model file will be and its sha256 (MONAI checks them)
    from monai.bundle import download_large_files

    (unz / "large_files.yml").write_text(_large_files_yaml(unz, ["models/model.pt", "models/model.ts"],
                                                           "https://example.org/releases/v1/"))
    large = yaml.safe_load((unz / "large_files.yml").read_text())["large_files"]
    assert [e["path"] for e in large] == ["models/model.pt", "models/model.ts"]
    for e in large:
        assert e["url"] == f"https://example.org/releases/v1/{e['path']}"
        assert hashlib.sha256((unz / e["path"]).read_bytes()).hexdigest() == e["hash_val"]
    download_large_files(bundle_path=str(unz))  # present files with the right hash: nothing downloaded
    with pytest.raises(BundleError, match="url-base is empty"):
        package_bundle(BUNDLES_DIR / bundle, tmp_path / "x.zip", ckpt=ckpt, url_base=" ")


def test_package_refuses_a_licence_pointer(tmp_path):
    bundle = "vindr_cxr_cardiomegaly_classification"
    copy = tmp_path / bundle
    copy.mkdir()
    copy_bundle_content(BUNDLES_DIR / bundle, copy)
    (copy / "LICENSE").write_text("Apache-2.0, see http://www.apache.org/licenses/LICENSE-2.0\n")
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.yaml"))
    ckpt = tmp_path / "w.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    with pytest.raises(BundleError, match="LICENSE: not the full Apache License 2.0 text"):
        package_bundle(copy, tmp_path / "x.zip", ckpt=ckpt)
    (copy / "docs" / "data_license.txt").unlink()
    with pytest.raises(BundleError, match="docs/data_license.txt missing"):
        package_bundle(copy, tmp_path / "x.zip", ckpt=ckpt)
    assert not (tmp_path / "x.zip").exists()
