"""``monai-ext package``: a self-contained model-zoo bundle zip, and the copying rules shared with the label app.

The zip holds ``<bundle name>/`` with configs, docs, LICENSE, the vendored code in ``scripts/``
(:mod:`.vendor`: the monai_ext modules the configs need, imports rewritten, the configs pointed at ``scripts``),
``models/model.pt`` (the checked checkpoint) and ``models/model.ts`` (MONAI's ``ckpt_export`` of the packaged
bundle, checked against the eager network). It runs with MONAI and the requirements of its metadata, without
monai_ext: ``python -m monai.bundle run --config_file configs/inference.yaml`` once unzipped. The packaged
metadata lists the vendored code's requirements (``required_packages_version``, ranges installable on Python
3.10-3.12) and is written with indent 4; ``large_files.yml`` (url and sha256 of the model files) is written only
with ``--url-base``, as the model zoo downloads from it. Before zipping, MONAI's ``verify_metadata``,
``verify_net_in_out`` and ``ckpt_export`` run on the packaged copy in a subprocess that cannot import monai_ext
(:mod:`.zoo_check`). Copying never follows symbolic links: links and files resolving outside the bundle are
skipped with a warning (a link to a private file must not end up in a package for publication).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from monai_ext import __version__
from monai_ext.bundle import vendor, zoo_check
from monai_ext.bundle.registry import INFERENCE_CONFIG, BundleError, resolve_bundle
from monai_ext.bundle.verify import TS_ATOL, _example_inputs, _max_diff, check_checkpoint, check_metadata, find_schema

logger = logging.getLogger(__name__)

__all__ = ["BUNDLE_CONTENT", "PACKAGE_REQUIRED", "ZOO_REQUIRED", "copy_bundle_content", "missing_content",
           "package_bundle", "sha256_file"]

#: what a packaged bundle / MONAI Label app copies from the bundle folder (data, models, eval, logs stay)
BUNDLE_CONTENT = ("configs", "docs", "LICENSE")
#: what a model-zoo package must hold from the bundle folder
PACKAGE_REQUIRED = ("configs/metadata.json", f"configs/{INFERENCE_CONFIG}", "docs/README.md", "LICENSE")
#: ... and what the model zoo asks for besides: the data's licence terms
ZOO_REQUIRED = (*PACKAGE_REQUIRED, "docs/data_license.txt")
#: words every copy of the Apache License 2.0 text holds (LICENSE must be the licence text, not a pointer to it)
LICENSE_MARKERS = ("Apache License", "Version 2.0", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                   "END OF TERMS AND CONDITIONS")
#: how long the checks on the packaged copy may take (a subprocess building the network and exporting it)
CHECK_TIMEOUT_S = 900


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing_content(root: Path, required: Sequence[str]) -> list[str]:
    """The entries of ``required`` (paths relative to ``root``) that do not exist."""
    return [name for name in required if not (root / name).exists()]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def copy_bundle_content(root: Path, dest: Path) -> list[str]:
    """Copy configs/, docs/ and LICENSE (those present) of bundle ``root`` into ``dest``.

    Symbolic links and anything resolving outside ``root`` are never followed: they are skipped with a
    warning (a link in a bundle to a private file must not end up in a package meant for publication).
    Returns the skipped paths, relative to ``root``.
    """
    skipped: list[str] = []

    def skip(path: Path, why: str) -> None:
        rel = path.relative_to(root).as_posix()
        skipped.append(rel)
        logger.warning("%s: not packaged (%s)", path, why)

    for name in BUNDLE_CONTENT:
        src = root / name
        if not (src.exists() or src.is_symlink()):
            continue
        if src.is_symlink() or not _inside(src, root):
            skip(src, "a symbolic link" if src.is_symlink() else "resolves outside the bundle")
            continue
        if src.is_file():
            shutil.copy2(src, dest / name, follow_symlinks=False)
            continue
        for folder, dirs, files in os.walk(src, followlinks=False):
            here = Path(folder)
            target = dest / here.relative_to(root)
            target.mkdir(parents=True, exist_ok=True)
            for d in sorted(dirs):
                if (here / d).is_symlink():
                    skip(here / d, "a symbolic link to a folder")
            dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink() and d != "__pycache__")
            for f in sorted(files):
                path = here / f
                if f.endswith(".pyc"):
                    continue
                if path.is_symlink():
                    skip(path, "a symbolic link")
                elif not path.is_file():
                    skip(path, "not a regular file")
                elif not _inside(path, root):
                    skip(path, "resolves outside the bundle")
                else:
                    shutil.copy2(path, target / f, follow_symlinks=False)
    return skipped


def _large_files_yaml(bundle_dir: Path, files: Sequence[str], url_base: str) -> str:
    entries = [{"path": rel, "url": f"{url_base.rstrip('/')}/{rel}", "hash_val": sha256_file(bundle_dir / rel),
                "hash_type": "sha256"} for rel in files]
    head = ("# Large files of this bundle: where they are hosted and their sha256. "
            "`python -m monai.bundle download_large_files --bundle_path .` downloads a missing one and checks "
            "each.\n")
    return head + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def _check_license(path: Path) -> None:
    text = path.read_text()
    missing = [m for m in LICENSE_MARKERS if m not in text]
    if missing:
        raise BundleError(f"{path}: not the full Apache License 2.0 text (missing {missing[0]!r}); the model zoo "
                          f"needs the licence text itself in LICENSE")


def vendor_bundle(root: Path, dest: Path) -> dict[str, str]:
    """Vendor the monai_ext code the configs of bundle ``root`` need into ``dest/scripts``, point the configs in
    ``dest/configs`` at it and write ``dest/configs/metadata.json`` (indent 4) with the requirements of the vendored
    code. Returns the packaged ``required_packages_version``."""
    refs = vendor.config_references(root / "configs")
    if not refs:
        raise BundleError(f"{root / 'configs'}: no monai_ext name in the configs; nothing to vendor")
    modules, third = vendor.module_closure(refs)
    vendor.vendor_modules(modules, dest, __version__)
    run_needs = vendor.monai_run_imports(root / "configs")
    for path in sorted((dest / "configs").iterdir()):
        if path.suffix in vendor.CONFIG_SUFFIXES and path.name != "metadata.json":
            path.write_text(vendor.rewrite_config(path.read_text()))
    meta_file = dest / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    listed = dict(meta.get("required_packages_version") or {})
    listed.update(meta.pop("optional_packages_version", None) or {})  # deprecated in MONAI: merged
    meta["required_packages_version"] = vendor.distribution_specs(set(third) | run_needs, listed)
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")
    left = vendor.leftover_references(dest)
    if left:
        raise BundleError(f"{root}: the packaged copy still needs monai_ext: {'; '.join(left[:5])}")
    logger.info("%s: %d monai_ext modules vendored into scripts/; requirements %s", root.name, len(modules),
                meta["required_packages_version"])
    return meta["required_packages_version"]


def check_packaged(dest: Path, schema: Path, export: Path | None = None) -> dict:
    """MONAI's verify_metadata, verify_net_in_out and ckpt_export on the packaged copy ``dest``, in a subprocess
    that cannot import monai_ext (:mod:`.zoo_check`). Returns its result; raises :class:`BundleError` with its
    error output."""
    cmd = [sys.executable, zoo_check.__file__, str(dest), "--schema", str(schema), "--forbid", vendor.PACKAGE]
    if export is not None:
        cmd += ["--export", str(export)]
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False,
                          env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        raise BundleError(f"{dest.name}: the packaged bundle fails MONAI's checks without monai_ext:\n"
                          f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def package_bundle(bundle: str | Path, out: str | Path, ckpt: str | Path | None = None,
                   schema: str | Path | None = None, url_base: str | None = None,
                   bundles_dir: str | Path | None = None) -> Path:
    """Write ``out`` (a zip holding ``<bundle name>/``): configs pointed at the vendored ``scripts/``, docs, LICENSE,
    ``models/model.pt`` (the checked checkpoint), ``models/model.ts`` (MONAI's ``ckpt_export`` of the packaged copy,
    within 1e-4 of the eager network) and, with ``url_base``, ``large_files.yml``. ``bundle``: a folder, or a name
    in ``bundles_dir`` (default ``./bundles``)."""
    root = resolve_bundle(bundle, bundles_dir)
    ckpt = Path(ckpt) if ckpt else root / "models" / "model.pt"
    if not ckpt.is_file():
        raise BundleError(f"{ckpt}: checkpoint not found; train the bundle first (python -m monai.bundle run "
                          f"training --config_file {root}/configs/train.yaml) or give --ckpt")
    missing = missing_content(root, ZOO_REQUIRED)
    if missing:
        raise BundleError(f"{root}: {', '.join(missing)} missing; a packaged bundle needs {', '.join(ZOO_REQUIRED)}")
    if url_base is not None and not url_base.strip():
        raise BundleError("--url-base is empty; give the address the model files will be downloaded from, or leave "
                          "it out (then the zip carries them and large_files.yml is not written)")
    schema_path = find_schema(schema)
    check_metadata(root, schema_path)
    net = check_checkpoint(root, ckpt)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / root.name
        dest.mkdir()
        copy_bundle_content(root, dest)
        lost = missing_content(dest, ZOO_REQUIRED)
        if lost:
            raise BundleError(f"{root}: {', '.join(lost)} not packaged (symbolic link or outside the bundle); "
                              f"replace the link by the file itself")
        _check_license(dest / "LICENSE")
        vendor_bundle(root, dest)
        (dest / "models").mkdir()
        shutil.copy2(ckpt, dest / "models" / "model.pt")
        ts_path = dest / "models" / "model.ts"
        result = check_packaged(dest, schema_path, export=ts_path)
        diff = _torchscript_diff(root, net, ts_path)
        logger.info("%s: packaged copy passes %s; TorchScript vs eager max |diff| = %.3g", root.name, result, diff)
        if url_base:
            (dest / "large_files.yml").write_text(
                _large_files_yaml(dest, ["models/model.pt", "models/model.ts"], url_base))
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(dest.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(dest.parent).as_posix())
    logger.info("packaged %s -> %s", root.name, out)
    return out


def _torchscript_diff(root: Path, net: torch.nn.Module, ts_path: Path) -> float:
    """Largest |TorchScript - eager| on a random batch of 2 (and with the APF leaf mask); above 1e-4 raises."""
    ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
    x, extra = _example_inputs(root, net, batch=2)
    with torch.no_grad():
        diffs = [_max_diff(ts(x), net(x))]
        if extra:
            diffs.append(_max_diff(ts(x, **extra), net(x, **extra)))
    if not max(diffs) <= TS_ATOL:
        raise BundleError(f"{ts_path.name}: TorchScript output differs from the eager network by {max(diffs):.3g}")
    return max(diffs)
