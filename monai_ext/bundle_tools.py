"""Bundle tooling around MONAI's own checks: verify, export, package, and a MONAI Label app.

Sub-commands (``monai-ext ...``):

* ``verify <bundle>``: MONAI's ``verify_metadata`` (against a local copy of the 20240725 schema,
  never downloaded), ``verify_net_in_out`` (net id ``network_def``, inference config), a check that
  the checkpoint belongs to this bundle's network, ``ckpt_export`` to TorchScript and ``onnx_export``,
  each export compared with the eager network (TorchScript within 1e-4, onnxruntime within 1e-3).
  MONAI's own errors are re-raised as :class:`BundleError` naming the file and the problem.
  Bundle configs are code (their ``$`` expressions run): ``verify`` is no safety check for an untrusted bundle.
* ``package <bundle> --out FILE.zip``: a model-zoo style zip (configs, ``models/model.pt``,
  ``models/model.ts`` from MONAI's ``ckpt_export``, docs, LICENSE, ``large_files.yml`` with hashes)
  that runs with ``python -m monai.bundle run --config_file configs/inference.yaml`` once unzipped.
* ``label-app --out DIR``: a MONAI Label app folder (``main.py`` for MONAI Label's ``monaibundle``
  layout) holding the bundles with their trained weights under ``<app>/model/<name>/``; prints the
  ``monailabel start_server`` command, bound to 127.0.0.1 unless ``--host`` says otherwise.

Packaging never follows symbolic links: links and files resolving outside the bundle are skipped with a
warning. Checkpoints are read with ``torch.load(weights_only=True)`` only (:mod:`monai_ext.utils.checkpoint`).

APF-UNETR takes ``(x, mask)``. MONAI's ``verify_net_in_out`` gets the mask through its
``extra_forward_args``; MONAI's ``onnx_export`` can only feed the image, so its ONNX file is the
``mask=None`` graph (every leaf real). The inference path the bundle really uses (APFInferer passes the
padding mask) is exported in addition, through MONAI's ``convert_to_onnx`` with ``(x, mask)`` inputs,
and both are compared with the eager network.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from monai_ext.utils.checkpoint import (
    CKPT_KEYS,
    CheckpointError,
    compare_state_dict,
    load_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_NAMES",
    "BundleError",
    "SCHEMA_MD5",
    "SCHEMA_NAME",
    "build_label_app",
    "bundle_parser",
    "check_checkpoint",
    "check_metadata",
    "check_net_in_out",
    "export_onnx",
    "export_torchscript",
    "find_schema",
    "label_server_command",
    "load_checkpoint_state",
    "package_bundle",
    "register",
    "resolve_bundle",
    "verify_bundle",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
#: the four bundles of this project, in the order the tools list them
BUNDLE_NAMES: tuple[str, ...] = (
    "vindr_cxr_cardiomegaly_classification",
    "duke_breast_mri_classification",
    "apf_unetr_btcv_segmentation",
    "apf_unetr_paip_segmentation",
)
#: MONAI's bundle metadata schema (public data file of Project MONAI) and its md5
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
#: where a local copy is looked for when no schema is given
SCHEMA_SEARCH = (REPO_ROOT / "tests" / "data" / SCHEMA_NAME,)
NET_ID = "network_def"
INFERENCE_CONFIG = "inference.yaml"
TS_ATOL = 1e-4
ONNX_ATOL = 1e-3
#: what a packaged bundle / MONAI Label app copies from the bundle folder (data, models, eval, logs stay)
BUNDLE_CONTENT = ("configs", "docs", "LICENSE")
#: what a model-zoo package must hold from the bundle folder
PACKAGE_REQUIRED = ("configs/metadata.json", f"configs/{INFERENCE_CONFIG}", "docs/README.md", "LICENSE")


class BundleError(ValueError):
    """A bundle, its metadata or a checkpoint is unusable; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------- basics
def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle folder from a path or one of :data:`BUNDLE_NAMES` (looked up in the repository's ``bundles/``)."""
    path = Path(bundle)
    if not path.is_dir() and (BUNDLES_DIR / str(bundle)).is_dir():
        path = BUNDLES_DIR / str(bundle)
    if not path.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder (known bundles: {', '.join(BUNDLE_NAMES)})")
    for need in ("configs/metadata.json", f"configs/{INFERENCE_CONFIG}"):
        if not (path / need).is_file():
            raise BundleError(f"{path}: not a complete bundle, {need} is missing")
    return path.resolve()


def _read_metadata(meta_file: Path) -> dict:
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_file}: not valid JSON ({e})") from None


def bundle_parser(bundle: str | Path, config: str = INFERENCE_CONFIG, overrides: Mapping[str, Any] | None = None):
    """MONAI ``ConfigParser`` of ``configs/<config>`` with the bundle's metadata, ``bundle_root`` set to
    the bundle folder and ``overrides`` (``{"id#sub": value}``, as on MONAI's command line) applied."""
    from monai.bundle import ConfigParser

    root = resolve_bundle(bundle)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- metadata
def find_schema(schema: str | Path | None = None) -> Path:
    """The local copy of MONAI's metadata schema: ``schema`` if given, else the copy in ``tests/data``."""
    candidates = [Path(schema)] if schema else list(SCHEMA_SEARCH)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise BundleError(f"metadata schema not found (looked at {', '.join(map(str, candidates))}); give the local copy "
                      f"of MONAI's {SCHEMA_NAME} with --schema (nothing is downloaded)")


def check_metadata(bundle: str | Path, schema: str | Path | None = None) -> dict:
    """Run MONAI's ``verify_metadata`` on the bundle's ``configs/metadata.json`` against a local schema.

    MONAI is given the local file as its download target, so it skips the download (and, for the known
    20240725 schema, checks its md5). Also checked: ``version`` is a key of ``changelog`` (model-zoo rule).
    Returns the metadata; raises :class:`BundleError` naming the file, the JSON path and the problem.
    """
    from monai.bundle import verify_metadata

    root = resolve_bundle(bundle)
    meta_file = root / "configs" / "metadata.json"
    meta = _read_metadata(meta_file)
    schema_path = find_schema(schema)
    url = meta.get("schema")
    if not url:
        raise BundleError(f"{meta_file}: the required field 'schema' (URL of MONAI's metadata schema) is missing")
    if Path(str(url)).name != schema_path.name:
        raise BundleError(f"{meta_file}: 'schema' names {Path(str(url)).name} but the local schema is "
                          f"{schema_path} (give the matching copy with --schema)")
    hash_val = SCHEMA_MD5 if schema_path.name == SCHEMA_NAME else None
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(schema_path), hash_val=hash_val, hash_type="md5")
    except ValueError as e:
        raise BundleError(f"{meta_file}: does not validate against {schema_path.name}: {_schema_error(meta, schema_path, e)}") from None
    changelog = meta.get("changelog") or {}
    if meta["version"] not in changelog:
        raise BundleError(f"{meta_file}: version {meta['version']!r} has no entry in 'changelog' "
                          f"(entries: {sorted(changelog)})")
    return meta


def _schema_error(meta: dict, schema_path: Path, monai_error: Exception) -> str:
    """jsonschema's most relevant error with its JSON path (MONAI's message drops the path)."""
    try:
        import jsonschema

        schema = json.loads(schema_path.read_text())
        err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(meta))
    except Exception:  # noqa: BLE001 - fall back to MONAI's own message
        err = None
    if err is None:
        return str(monai_error).replace("\n", " ")
    where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
    return f"at {where}: {err.message}"


# ---------------------------------------------------------------------------------------- network I/O
def _network(bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    parser = bundle_parser(bundle, overrides=overrides)
    try:
        return parser.get_parsed_content(NET_ID, instantiate=True)
    except KeyError:
        raise BundleError(f"{resolve_bundle(bundle)}/configs/{INFERENCE_CONFIG}: no '{NET_ID}' entry") from None


def _example_inputs(bundle: str | Path, net: torch.nn.Module, batch: int = 1, seed: int = 0,
                    overrides: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A random input of the metadata's image shape, and the network's extra forward arguments.

    Extra inputs are those of ``network_data_format#inputs`` besides ``image`` that ``forward`` takes.
    A boolean one (APF-UNETR's leaf ``mask``, shape ``(L,)``) gets the last quarter of the leaves marked
    as padding, the case the APF inferer produces when a quadtree has fewer leaves than ``L``. A network
    with ``mask`` and ``num_tokens`` whose metadata does not list the mask gets the same mask.
    """
    parser = bundle_parser(bundle, overrides=overrides)
    inputs = parser.get("_meta_#network_data_format#inputs")
    info = inputs["image"]
    shape = (batch, int(info["num_channels"]), *[int(s) for s in info["spatial_shape"]])
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    params = inspect.signature(net.forward).parameters
    specs = {k: v for k, v in inputs.items() if k != "image" and k in params}
    if "mask" in params and "mask" not in specs and hasattr(net, "num_tokens"):
        specs["mask"] = {"dtype": "bool", "spatial_shape": [int(net.num_tokens)]}
    extra: dict[str, torch.Tensor] = {}
    for key, spec in specs.items():
        spatial = [int(s) for s in spec["spatial_shape"]]
        if spec.get("dtype") == "bool":
            n = spatial[-1]
            value = torch.ones(batch, *spatial, dtype=torch.bool)
            value[..., n - max(1, n // 4):] = False
        else:
            channels = [int(spec["num_channels"])] if int(spec.get("num_channels", 0)) else []
            value = torch.rand(batch, *channels, *spatial, generator=gen)
        extra[key] = value
    return x, extra


def check_net_in_out(bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> None:
    """MONAI's ``verify_net_in_out`` (net id ``network_def``, inference config, CPU); APF-UNETR also gets its
    leaf mask through ``extra_forward_args``."""
    from monai.bundle import verify_net_in_out

    root = resolve_bundle(bundle)
    net = _network(root, overrides)
    _, extra = _example_inputs(root, net, overrides=overrides)
    try:
        verify_net_in_out(net_id=NET_ID, meta_file=str(root / "configs" / "metadata.json"),
                          config_file=str(root / "configs" / INFERENCE_CONFIG), device="cpu",
                          extra_forward_args=extra, bundle_root=str(root), **dict(overrides or {}))
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{root / 'configs'}: network_def does not match metadata.json's network_data_format: "
                          f"{e}") from None


# ----------------------------------------------------------------------------------------- checkpoints
def load_checkpoint_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """The network weights of a MONAI checkpoint: a plain state dict or one nested under
    ``model``/``network``/``state_dict``/``net`` (CheckpointSaver layouts), ``module.`` prefixes removed.
    Read with the package's one loader (``weights_only=True``: a pickled object is refused, never run)."""
    path = Path(ckpt)
    if not path.is_file():
        raise BundleError(f"{path}: checkpoint not found")
    try:
        return load_state_dict(path, CKPT_KEYS)
    except CheckpointError as e:
        raise BundleError(str(e)) from None


def check_checkpoint(bundle: str | Path, ckpt: str | Path, overrides: Mapping[str, Any] | None = None,
                     net: torch.nn.Module | None = None) -> torch.nn.Module:
    """Load ``ckpt`` into the bundle's ``network_def`` after checking that every tensor has its place and shape.

    Returns the network with the weights loaded (eval mode). A checkpoint of another bundle, preset or
    image size raises :class:`BundleError` listing what is missing, unexpected and of another shape.
    """
    root = resolve_bundle(bundle)
    net = _network(root, overrides) if net is None else net
    state = load_checkpoint_state(ckpt)
    diff = compare_state_dict(state, net.state_dict())
    missing, unexpected, shapes = diff.missing, diff.unexpected, diff.shapes
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} network tensors are not in it ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} of its tensors have no place in the network ({few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} tensors have another shape ({few(shapes)})")
        raise BundleError(
            f"{ckpt}: not a checkpoint of bundle '{root.name}' (network_def {type(net).__name__} from "
            f"configs/{INFERENCE_CONFIG}{', overrides ' + json.dumps(dict(overrides), default=str) if overrides else ''}): "
            + "; ".join(parts) + ". Was it trained with another bundle, preset or image size?")
    net.load_state_dict(state)
    return net.eval()


# --------------------------------------------------------------------------------------------- exports
def _max_diff(a: Any, b: Any) -> float:
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if a.shape != b.shape:
        raise BundleError(f"exported output shape {tuple(a.shape)} differs from the eager network's {tuple(b.shape)}")
    return float((a - b).abs().max())


def export_torchscript(bundle: str | Path, ckpt: str | Path, filepath: str | Path,
                       overrides: Mapping[str, Any] | None = None, atol: float = TS_ATOL) -> float:
    """MONAI's ``ckpt_export`` (``network_def``, inference config, metadata and config embedded), then the
    TorchScript module against the eager network on a random batch of 2 (with the mask for APF-UNETR).
    Returns the largest absolute difference; raises :class:`BundleError` above ``atol``."""
    from monai.bundle import ckpt_export

    root = resolve_bundle(bundle)
    net = check_checkpoint(root, ckpt, overrides)
    Path(filepath).parent.mkdir(parents=True, exist_ok=True)
    ckpt_export(net_id=NET_ID, filepath=str(filepath), ckpt_file=str(ckpt),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / INFERENCE_CONFIG),
                bundle_root=str(root), **dict(overrides or {}))
    ts = torch.jit.load(str(filepath), map_location="cpu").eval()
    x, extra = _example_inputs(root, net, batch=2, overrides=overrides)
    with torch.no_grad():
        diffs = [_max_diff(ts(x), net(x))]
        if extra:
            diffs.append(_max_diff(ts(x, **extra), net(x, **extra)))
    diff = max(diffs)
    logger.info("%s: TorchScript vs eager max |diff| = %.3g", root.name, diff)
    if not diff <= atol:
        raise BundleError(f"{filepath}: TorchScript output differs from the eager network by {diff:.3g} > {atol}")
    return diff


def _ort_run(path: Path, inputs: Sequence[torch.Tensor]) -> Any:
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise BundleError(f"{path}: the ONNX graph takes {len(names)} inputs {names}, expected {len(inputs)}")
    return sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]


def export_onnx(bundle: str | Path, ckpt: str | Path, filepath: str | Path,
                overrides: Mapping[str, Any] | None = None, atol: float = ONNX_ATOL) -> dict[str, float]:
    """MONAI's ``onnx_export`` (image input only), compared with the eager network under onnxruntime.

    For a network with a leaf mask (APF-UNETR) the bundle's real inference path ``net(x, mask)`` is also
    exported (MONAI's ``convert_to_onnx`` with both inputs, to ``<filepath stem>_mask.onnx``) and compared.
    Returns ``{"image": diff[, "image+mask": diff]}``; raises :class:`BundleError` above ``atol``.
    """
    from monai.bundle import onnx_export
    from monai.networks.utils import convert_to_onnx

    root = resolve_bundle(bundle)
    net = check_checkpoint(root, ckpt, overrides)
    filepath = Path(filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    onnx_export(net_id=NET_ID, filepath=str(filepath), ckpt_file=str(ckpt),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / INFERENCE_CONFIG),
                bundle_root=str(root), **dict(overrides or {}))
    x, extra = _example_inputs(root, net, batch=1, seed=1, overrides=overrides)
    with torch.no_grad():
        diffs = {"image": _max_diff(_ort_run(filepath, [x]), net(x))}
        if extra:
            masked = filepath.with_name(filepath.stem + "_mask.onnx")
            inputs = [x, *extra.values()]
            convert_to_onnx(net, inputs=inputs, input_names=["image", *extra], output_names=["pred"],
                            filename=str(masked), use_trace=False)
            diffs["image+mask"] = _max_diff(_ort_run(masked, inputs), net(x, **extra))
    logger.info("%s: onnxruntime vs eager max |diff| = %s", root.name, diffs)
    worst = max(diffs.values())
    if not worst <= atol:
        raise BundleError(f"{filepath}: onnxruntime output differs from the eager network by {worst:.3g} > {atol}")
    return diffs


def verify_bundle(bundle: str | Path, ckpt: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                  schema: str | Path | None = None, onnx: bool = True, workdir: str | Path | None = None) -> dict:
    """All checks of ``monai-ext verify``: metadata, network in/out, and TorchScript and ONNX parity with the
    weights of ``ckpt`` -- by default the bundle's ``models/model.pt`` when it exists and no ``overrides``
    change the network, else freshly initialized weights."""
    root = resolve_bundle(bundle)
    result: dict[str, Any] = {"bundle": root.name}
    check_metadata(root, schema)
    result["metadata"] = "ok"
    check_net_in_out(root, overrides)
    result["net_in_out"] = "ok"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp_dir = Path(tmp)
        if ckpt is None and not overrides and (root / "models" / "model.pt").is_file():
            ckpt = root / "models" / "model.pt"
        if ckpt is None:
            ckpt = tmp_dir / "init.pt"
            torch.manual_seed(0)
            torch.save(_network(root, overrides).state_dict(), ckpt)
            result["checkpoint"] = "freshly initialized weights"
        else:
            check_checkpoint(root, ckpt, overrides)
            result["checkpoint"] = str(ckpt)
        result["torchscript_max_diff"] = export_torchscript(root, ckpt, tmp_dir / "model.ts", overrides)
        if onnx:
            result["onnx_max_diff"] = export_onnx(root, ckpt, tmp_dir / "model.onnx", overrides)
    return result


# ------------------------------------------------------------------------------------------- packaging
def _missing_content(root: Path, required: Sequence[str]) -> list[str]:
    return [name for name in required if not (root / name).exists()]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _copy_bundle_content(root: Path, dest: Path) -> list[str]:
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
                        "hash_val": _sha256(bundle_dir / rel), "hash_type": "sha256"})
    head = ("# Large files of this bundle with their sha256. They ship inside the package; "
            "`python -m monai.bundle download_large_files --bundle_path .` checks them "
            "(and downloads from `url` when one is given and a file is missing).\n")
    return head + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def package_bundle(bundle: str | Path, out: str | Path, ckpt: str | Path | None = None,
                   schema: str | Path | None = None, url_base: str | None = None) -> Path:
    """Write ``out`` (a zip holding ``<bundle name>/``): configs, docs, LICENSE, ``models/model.pt`` (the
    checked checkpoint), ``models/model.ts`` (MONAI's ``ckpt_export``, checked against the eager network)
    and ``large_files.yml`` (sha256 of both model files). The metadata is verified first."""
    root = resolve_bundle(bundle)
    ckpt = Path(ckpt) if ckpt else root / "models" / "model.pt"
    if not ckpt.is_file():
        raise BundleError(f"{ckpt}: checkpoint not found; train the bundle first (python -m monai.bundle run "
                          f"training --config_file {root}/configs/train.yaml) or give --ckpt")
    missing = _missing_content(root, PACKAGE_REQUIRED)
    if missing:
        raise BundleError(f"{root}: {', '.join(missing)} missing; a packaged bundle needs "
                          f"{', '.join(PACKAGE_REQUIRED)}")
    check_metadata(root, schema)
    check_checkpoint(root, ckpt)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / root.name
        dest.mkdir()
        _copy_bundle_content(root, dest)
        lost = _missing_content(dest, PACKAGE_REQUIRED)
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


# ------------------------------------------------------------------------------------------ MONAI Label
LABEL_APP_MAIN = '''"""MONAI Label app serving the monai_ext bundles (written by `monai-ext label-app`).

Like MONAI Label's sample `monaibundle` app, it loads every bundle folder under model/ with
BundleInferTask. MONAI Label picks the task type from the folder name (segmentation before
classification); a classification bundle ends in per-class probabilities, so it is created with
add_post_restore=False (restoring a class vector to the image grid fails) and answers JSON
predictions. Segmentation label maps are written as uint8, those of 2D images without a channel axis.
Start it with (local only: MONAI Label has no authentication by default, and the studies are patient data):
    monailabel start_server --app <this folder> --studies <images> --conf zoo_source local --conf sam2 false
        --host 127.0.0.1 --port 8000   (one command line)
Before exposing it on a network, put MONAI Label's authentication or an authenticating reverse proxy (TLS) in
front of it; see docs/security.md of monai_ext.
"""

import logging
import os
from typing import Any, Dict

import monailabel
from monai.transforms import MapTransform
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)


class SqueezeLabel2d(MapTransform):
    """Drop the channel of a (1, H, W) label map of a 2D image: MONAI Label's Restored keeps it for 2D
    input, and its writer would then save a 3D image (an H x 1 PNG)."""

    def __init__(self, keys, ref_image: str = "image"):
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            if d[self.ref_image].ndim == 3 and d[key].ndim == 3 and d[key].shape[0] == 1:
                d[key] = d[key][0]
        return d


class MonaiExtBundleInferTask(BundleInferTask):
    """BundleInferTask whose segmentation post-processing ends with :class:`SqueezeLabel2d`."""

    def post_transforms(self, data=None):
        post = list(super().post_transforms(data))
        if self.add_post_restore:
            post.append(SqueezeLabel2d(keys=self.key_pred, ref_image=self.key_image))
        return post


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")
        self.bundles = sorted(
            d for d in os.listdir(self.model_dir)
            if os.path.isfile(os.path.join(self.model_dir, d, "configs", "inference.yaml"))
        )
        wanted = [m.strip() for m in conf.get("models", "").split(",") if m.strip() and m.strip() != "all"]
        unknown = sorted(set(wanted) - set(self.bundles))
        if unknown:
            raise ValueError(f"--conf models: {unknown} not in {self.model_dir} (available: {self.bundles})")
        if wanted:
            self.bundles = [b for b in self.bundles if b in wanted]
        logger.info("bundles: %s", self.bundles)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_ext bundles",
            description="monai_ext MONAI bundles (softmax-free ViT classification, APF-UNETR segmentation)",
            version=monailabel.__version__,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name in self.bundles:
            path = os.path.join(self.model_dir, name)
            # classification bundles: the output is a class-probability vector, not an image
            classification = "classification" in name and "segmentation" not in name
            # segmentation: label maps are written as uint8 (the bundles' own SaveImaged dtype; MONAI Label
            # would write float32, which its PNG writer rejects); a request may still set result_dtype.
            # load_strict: a checkpoint that does not fit the network fails instead of loading partly.
            infers[name] = MonaiExtBundleInferTask(
                path,
                self.conf,
                add_post_restore=not classification,
                load_strict=True,
                config=None if classification else {"result_dtype": "uint8"},
            )
            logger.info("+++ infer task %s: %s", name, "classification" if classification else "segmentation")
        return infers

    def init_trainers(self) -> Dict[str, Any]:
        return {}
'''


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
                    ckpts: Mapping[str, str | Path] | None = None) -> Path:
    """Assemble a MONAI Label app folder ``out`` with ``main.py`` and ``model/<bundle>/`` per bundle
    (configs, docs, LICENSE, ``models/model.pt``). Weights come from ``ckpts[name]`` or the bundle's
    ``models/model.pt``; each is checked against the bundle's network (default configuration, as
    MONAI Label runs it)."""
    out = Path(out)
    roots = [resolve_bundle(b) for b in (bundles or BUNDLE_NAMES)]
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
        missing = _missing_content(root, PACKAGE_REQUIRED[2:])
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
        _copy_bundle_content(root, dest)
        (dest / "models").mkdir()
        shutil.copy2(ckpt, dest / "models" / "model.pt")
        logger.info("label app: %s <- %s", dest, ckpt)
    (out / "main.py").write_text(LABEL_APP_MAIN)
    return out


# ------------------------------------------------------------------------------------------------- CLI
def _parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as on MONAI's command line; VALUE is read as YAML (numbers, lists, dicts)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BundleError(f"--override {item!r}: expected KEY=VALUE, e.g. preset=paper or image_size=512")
        out[key] = yaml.safe_load(value)
    return out


def _parse_ckpts(items: Sequence[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise BundleError(f"--ckpt {item!r}: expected BUNDLE=PATH")
        out[name] = Path(path)
    return out


def _cmd_verify(args: argparse.Namespace) -> int:
    failed = 0
    for bundle in args.bundle:
        try:
            result = verify_bundle(bundle, ckpt=args.ckpt, overrides=_parse_overrides(args.override),
                                   schema=args.schema, onnx=not args.no_onnx)
            logger.info("verified: %s", json.dumps(result, default=str))
        except BundleError as e:
            logger.error("%s", e)
            failed += 1
    return 1 if failed else 0


def _cmd_package(args: argparse.Namespace) -> int:
    try:
        package_bundle(args.bundle, args.out, ckpt=args.ckpt, schema=args.schema, url_base=args.url_base)
    except BundleError as e:
        logger.error("%s", e)
        return 1
    return 0


def _cmd_label_app(args: argparse.Namespace) -> int:
    try:
        build_label_app(args.out, bundles=args.bundle or None, ckpts=_parse_ckpts(args.ckpt))
    except BundleError as e:
        logger.error("%s", e)
        return 1
    logger.info("MONAI Label app written to %s; start it with:\n  %s", args.out,
                label_server_command(args.out, host=args.host, port=args.port))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("--host %s: the server will be reachable from other machines, and MONAI Label has no "
                       "authentication by default (anyone could read the studies and replace the weights); put "
                       "MONAI Label's auth or an authenticating reverse proxy in front of it (docs/security.md)",
                       args.host)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="MONAI's bundle checks (metadata, net in/out, TorchScript and ONNX parity); not a safety check",
        description="MONAI's bundle checks: metadata, network in/out, TorchScript and ONNX parity. A bundle's configs "
                    "are code: verifying one runs its `$` expressions and imports its `_target_`s, as "
                    "`python -m monai.bundle run` does. `verify` is therefore NOT a safety check for a bundle you do "
                    "not trust; read its configs first (docs/security.md). Checkpoints are read weights-only.")
    p.add_argument("bundle", nargs="+", help="bundle folder or name")
    p.add_argument("--ckpt", type=Path, default=None,
                   help="checkpoint to check and export (default models/model.pt, else fresh weights)")
    p.add_argument("--schema", type=Path, default=None, help=f"local copy of MONAI's {SCHEMA_NAME}")
    p.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="config override as on MONAI's command line (value read as YAML), repeatable")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("package", help="zip a bundle with its weights and TorchScript export (model-zoo layout)")
    p.add_argument("bundle", help="bundle folder or name")
    p.add_argument("--out", type=Path, required=True, help="FILE.zip")
    p.add_argument("--ckpt", type=Path, default=None, help="weights (default <bundle>/models/model.pt)")
    p.add_argument("--schema", type=Path, default=None, help=f"local copy of MONAI's {SCHEMA_NAME}")
    p.add_argument("--url-base", default=None, help="where the large files will be hosted (large_files.yml url)")
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser("label-app", help="assemble a MONAI Label app folder holding the bundles and their weights")
    p.add_argument("--out", type=Path, required=True, help="app folder to write")
    p.add_argument("--bundle", action="append", help="bundle to include (repeatable; default: all four)")
    p.add_argument("--ckpt", action="append", metavar="BUNDLE=PATH",
                   help="weights of one bundle (default <bundle>/models/model.pt), repeatable")
    p.add_argument("--host", default=LABEL_HOST,
                   help=f"address in the printed start_server command (default {LABEL_HOST}: this machine only; "
                        "see docs/security.md before exposing it)")
    p.add_argument("--port", type=int, default=8000, help="port in the printed start_server command")
    p.set_defaults(func=_cmd_label_app)
