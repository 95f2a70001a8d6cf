"""``monai-ext label-app``: a MONAI Label app folder holding the bundles with their trained weights.

The app's ``main.py`` is a copy of :mod:`monai_ext.bundle.label_app_main` (MONAI Label's ``monaibundle``
layout); each bundle goes to ``<app>/model/<name>/`` (configs, docs, LICENSE, ``models/model.pt``), its
weights checked against its network first. Only a folder holding :data:`LABEL_APP_MARKER` (written first) is
ever updated in place; symbolic links are never followed. The printed ``monailabel start_server`` command
binds to 127.0.0.1 unless ``--host`` says otherwise (MONAI Label has no authentication by default).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai_ext.bundle.package import (
    PACKAGE_REQUIRED,
    copy_bundle_content,
    missing_content,
)
from monai_ext.bundle.registry import BUNDLE_NAMES, BundleError, resolve_bundle
from monai_ext.bundle.verify import check_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["LABEL_APP_MAIN", "LABEL_APP_MARKER", "LABEL_HOST", "build_label_app", "label_server_command"]

#: the module copied as the app's ``main.py`` (imported by MONAI Label, not by monai_ext)
LABEL_APP_MAIN = Path(__file__).with_name("label_app_main.py")

#: written first into a MONAI Label app folder; only folders holding it are ever updated in place
LABEL_APP_MARKER = ".monai_ext_label_app"
#: where ``monailabel start_server`` listens unless the user asks otherwise (MONAI Label has no auth by default)
LABEL_HOST = "127.0.0.1"


def label_server_command(app: str | Path, studies: str | Path = "STUDIES", host: str = LABEL_HOST,
                         port: int = 8000) -> str:
    """The ``monailabel start_server`` command for an app written by :func:`build_label_app` (offline model
    zoo, no SAM2), bound to ``host`` (default ``127.0.0.1``: reachable from this machine only)."""
    import shlex

    return shlex.join(["monailabel", "start_server", "--app", str(app), "--studies", str(studies),
                       "--conf", "zoo_source", "local", "--conf", "sam2", "false",
                       "--host", str(host), "--port", str(port)])


def build_label_app(out: str | Path, bundles: Sequence[str | Path] | None = None,
                    ckpts: Mapping[str, str | Path] | None = None, bundles_dir: str | Path | None = None) -> Path:
    """Assemble a MONAI Label app folder ``out`` with ``main.py`` and ``model/<bundle>/`` per bundle
    (configs, docs, LICENSE, ``models/model.pt``). ``bundles``: folders or names in ``bundles_dir`` (default
    ``./bundles``), default all of :data:`~monai_ext.bundle.registry.BUNDLE_NAMES`. Weights come from
    ``ckpts[name]`` or the bundle's ``models/model.pt``; each is checked against the bundle's network
    (default configuration, as MONAI Label runs it)."""
    out = Path(out)
    roots = [resolve_bundle(b, bundles_dir) for b in (bundles or BUNDLE_NAMES)]
    ckpts = {str(k): Path(v) for k, v in (ckpts or {}).items()}
    unknown = sorted(set(ckpts) - {r.name for r in roots})
    if unknown:
        raise BundleError(f"--ckpt given for {unknown}, which is not among the app's bundles {[r.name for r in roots]}")
    plan = []
    for root in roots:
        ckpt = ckpts.get(root.name, root / "models" / "model.pt")
        if not ckpt.is_file():
            raise BundleError(f"{ckpt}: no trained weights for {root.name}; train it (python -m monai.bundle run "
                              f"training --config_file {root}/configs/train.yaml) or give --ckpt {root.name}=PATH")
        check_checkpoint(root, ckpt)
        missing = missing_content(root, PACKAGE_REQUIRED[2:])
        if missing:
            logger.warning("%s: %s missing; the app gets configs and weights only", root, ", ".join(missing))
        plan.append((root, ckpt))
    marker = out / LABEL_APP_MARKER
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{out}: not a folder; choose a new folder for the app")
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise BundleError(f"{out}: holds files not written by `monai-ext label-app` (no {LABEL_APP_MARKER}); "
                          f"nothing there is replaced. Choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by monai-ext label-app; it replaces model/<bundle>/ only in folders with this file\n")
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for root, ckpt in plan:
        dest = model_dir / root.name
        if dest.is_symlink():
            dest.unlink()  # the link itself, never its target
        elif dest.exists():
            shutil.rmtree(dest)  # an app folder this tool wrote (marker checked above)
        dest.mkdir()
        copy_bundle_content(root, dest)
        (dest / "models").mkdir()
        shutil.copy2(ckpt, dest / "models" / "model.pt")
        logger.info("label app: %s <- %s", dest, ckpt)
    main = out / "main.py"
    if main.is_symlink():
        main.unlink()  # the link itself, never its target
    shutil.copyfile(LABEL_APP_MAIN, main)
    return out
