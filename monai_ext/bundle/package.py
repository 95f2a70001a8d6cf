"""``monai-ext package``: a model-zoo style zip of a bundle, and the copying rules shared with the label app.

The zip holds ``<bundle name>/`` with configs, docs, LICENSE, ``models/model.pt`` (the checked checkpoint),
``models/model.ts`` (MONAI's ``ckpt_export``, checked against the eager network) and ``large_files.yml`` (sha256
of both, read by MONAI's ``download_large_files``); it runs with ``python -m monai.bundle run --config_file
configs/inference.yaml`` once unzipped. Copying never follows symbolic links: links and files resolving outside
the bundle are skipped with a warning (a link to a private file must not end up in a package for publication).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from monai_ext.bundle.registry import INFERENCE_CONFIG, BundleError, resolve_bundle
from monai_ext.bundle.verify import check_checkpoint, check_metadata, export_torchscript

logger = logging.getLogger(__name__)

__all__ = ["BUNDLE_CONTENT", "PACKAGE_REQUIRED", "copy_bundle_content", "missing_content", "package_bundle",
           "sha256_file"]

#: what a packaged bundle / MONAI Label app copies from the bundle folder (data, models, eval, logs stay)
BUNDLE_CONTENT = ("configs", "docs", "LICENSE")
#: what a model-zoo package must hold from the bundle folder
PACKAGE_REQUIRED = ("configs/metadata.json", f"configs/{INFERENCE_CONFIG}", "docs/README.md", "LICENSE")


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


def _large_files_yaml(bundle_dir: Path, files: Sequence[str], url_base: str | None) -> str:
    entries = []
    for rel in files:
        entries.append({"path": rel, "url": f"{url_base.rstrip('/')}/{rel}" if url_base else "",
                        "hash_val": sha256_file(bundle_dir / rel), "hash_type": "sha256"})
    head = ("# Large files of this bundle with their sha256. They ship inside the package; "
            "`python -m monai.bundle download_large_files --bundle_path .` checks them "
            "(and downloads from `url` when one is given and a file is missing).\n")
    return head + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def package_bundle(bundle: str | Path, out: str | Path, ckpt: str | Path | None = None,
                   schema: str | Path | None = None, url_base: str | None = None,
                   bundles_dir: str | Path | None = None) -> Path:
    """Write ``out`` (a zip holding ``<bundle name>/``): configs, docs, LICENSE, ``models/model.pt`` (the
    checked checkpoint), ``models/model.ts`` (MONAI's ``ckpt_export``, checked against the eager network)
    and ``large_files.yml`` (sha256 of both model files). The metadata is verified first. ``bundle``: a
    folder, or a name in ``bundles_dir`` (default ``./bundles``)."""
    root = resolve_bundle(bundle, bundles_dir)
    ckpt = Path(ckpt) if ckpt else root / "models" / "model.pt"
    if not ckpt.is_file():
        raise BundleError(f"{ckpt}: checkpoint not found; train the bundle first (python -m monai.bundle run "
                          f"training --config_file {root}/configs/train.yaml) or give --ckpt")
    missing = missing_content(root, PACKAGE_REQUIRED)
    if missing:
        raise BundleError(f"{root}: {', '.join(missing)} missing; a packaged bundle needs "
                          f"{', '.join(PACKAGE_REQUIRED)}")
    check_metadata(root, schema)
    check_checkpoint(root, ckpt)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / root.name
        dest.mkdir()
        copy_bundle_content(root, dest)
        lost = missing_content(dest, PACKAGE_REQUIRED)
        if lost:
            raise BundleError(f"{root}: {', '.join(lost)} not packaged (symbolic link or outside the bundle); "
                              f"replace the link by the file itself")
        (dest / "models").mkdir()
        shutil.copy2(ckpt, dest / "models" / "model.pt")
        export_torchscript(dest, dest / "models" / "model.pt", dest / "models" / "model.ts")
        (dest / "large_files.yml").write_text(_large_files_yaml(dest, ["models/model.pt", "models/model.ts"], url_base))
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(dest.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(dest.parent).as_posix())
    logger.info("packaged %s -> %s", root.name, out)
    return out

