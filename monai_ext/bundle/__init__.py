"""Bundle tools around MONAI's own checks: verify, package, MONAI Label app (``monai-ext verify | package |
label-app``).

- :mod:`.registry`: the project's bundle names and where a bundle folder is found (``--bundles-dir``);
- :mod:`.verify`: MONAI's ``verify_metadata`` / ``verify_net_in_out`` / ``ckpt_export`` / ``onnx_export`` with
  parity checks, and the checkpoint-belongs-to-this-bundle check;
- :mod:`.package`: a model-zoo style zip;
- :mod:`.label_app`: a MONAI Label app folder, whose ``main.py`` is :mod:`.label_app_main`;
- :mod:`.cli`: the sub-commands.

Everything takes a bundle folder and works from an installed wheel (the metadata schema ships as package data).
"""

from __future__ import annotations

from monai_ext.bundle.label_app import (
    LABEL_APP_MARKER,
    LABEL_HOST,
    build_label_app,
    label_server_command,
)
from monai_ext.bundle.package import package_bundle
from monai_ext.bundle.registry import (
    BUNDLE_DATASETS,
    BUNDLE_NAMES,
    BundleError,
    bundles_dir,
    resolve_bundle,
)
from monai_ext.bundle.verify import (
    IMAGE_NET_ID,
    SCHEMA_MD5,
    SCHEMA_NAME,
    bundle_parser,
    check_checkpoint,
    check_image_network,
    check_metadata,
    check_net_in_out,
    export_onnx,
    export_torchscript,
    find_schema,
    load_checkpoint_state,
    verify_bundle,
)

__all__ = [
    "BUNDLE_DATASETS",
    "BUNDLE_NAMES",
    "IMAGE_NET_ID",
    "LABEL_APP_MARKER",
    "LABEL_HOST",
    "SCHEMA_MD5",
    "SCHEMA_NAME",
    "BundleError",
    "build_label_app",
    "bundle_parser",
    "bundles_dir",
    "check_checkpoint",
    "check_image_network",
    "check_metadata",
    "check_net_in_out",
    "export_onnx",
    "export_torchscript",
    "find_schema",
    "label_server_command",
    "load_checkpoint_state",
    "package_bundle",
    "resolve_bundle",
    "verify_bundle",
]
