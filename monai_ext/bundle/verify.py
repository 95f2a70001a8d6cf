"""``monai-ext verify``: MONAI's own bundle checks, with errors that name the file and the problem.

``verify_metadata`` against the copy of MONAI's 20240725 metadata schema shipped with this package (never
downloaded), ``verify_net_in_out`` (net id ``network_def``, inference config), a check that the checkpoint
belongs to the bundle's network, ``ckpt_export`` to TorchScript and ``onnx_export``, each export compared
with the eager network (TorchScript within 1e-4, onnxruntime within 1e-3). MONAI's own errors are re-raised
as :class:`~monai_ext.bundle.registry.BundleError`. Bundle configs are code (their ``$`` expressions run):
``verify`` is no safety check for an untrusted bundle. Checkpoints are read with ``torch.load(weights_only=True)``
only (:mod:`monai_ext.utils.checkpoint`).

APF bundles: ``metadata.json`` describes what a user sends and gets back (the full preprocessed image, the
full-resolution logits), i.e. the config item ``image_network`` (:class:`~monai_ext.inferers.InfererNetwork`:
APF, ``network_def``, unpatching); MONAI's ``verify_net_in_out`` runs on it, and the logits must have the image's
spatial shape. ``network_def`` (APF-UNETR) takes the pseudo-image ``(C, S, S)`` (``S = sqrt(num_tokens) *
patch_size``) and the leaf mask ``(x, mask)``: MONAI's ``verify_net_in_out`` gets that shape as a metadata
override and the mask through its ``extra_forward_args``; MONAI's ``onnx_export`` gets the shape and can only
feed the image, so its ONNX file is the ``mask=None`` graph (every leaf real). The inference path the bundle
really uses (APFInferer passes the padding mask) is exported in addition, through MONAI's ``convert_to_onnx``
with ``(x, mask)`` inputs, and both are compared with the eager network.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_ext.bundle.registry import INFERENCE_CONFIG, BundleError, resolve_bundle
from monai_ext.utils.checkpoint import (
    CKPT_KEYS,
    CheckpointError,
    compare_state_dict,
    load_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_NET_ID",
    "NET_ID",
    "SCHEMA_MD5",
    "SCHEMA_NAME",
    "bundle_parser",
    "check_checkpoint",
    "check_image_network",
    "check_metadata",
    "check_net_in_out",
    "export_onnx",
    "export_torchscript",
    "find_schema",
    "load_checkpoint_state",
    "verify_bundle",
]

#: MONAI's bundle metadata schema (public data file of Project MONAI, shipped as package data) and its md5
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
#: the copy shipped with the package, used when no schema is given
SCHEMA_FILE = Path(__file__).with_name(SCHEMA_NAME)
NET_ID = "network_def"
#: config item of an APF bundle: the whole path of a user's image (APF -> network_def -> unpatching)
IMAGE_NET_ID = "image_network"
TS_ATOL = 1e-4
ONNX_ATOL = 1e-3


# --------------------------------------------------------------------------------------------- basics
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


# ------------------------------------------------------------------------------------------- metadata
def find_schema(schema: str | Path | None = None) -> Path:
    """The local copy of MONAI's metadata schema: ``schema`` if given, else the copy shipped with the package."""
    candidates = [Path(schema)] if schema else [SCHEMA_FILE]
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
        why = _schema_error(meta, schema_path, e)
        raise BundleError(f"{meta_file}: does not validate against {schema_path.name}: {why}") from None
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


def _patch_space_shape(net: torch.nn.Module) -> tuple[int, int] | None:
    """``(S, S)`` of the APF pseudo-image an APF-UNETR takes (``S = sqrt(num_tokens) * patch_size``), else None."""
    if not (hasattr(net, "num_tokens") and hasattr(net, "patch_size")
            and "mask" in inspect.signature(net.forward).parameters):
        return None
    side = math.isqrt(int(net.num_tokens)) * int(net.patch_size)
    return side, side


def _fake_spatial(spatial_shape: Sequence[Any], any_size: int = 2) -> list[int]:
    """A concrete shape for a metadata ``spatial_shape``: integers kept, ``"*"`` (any size) -> ``any_size``."""
    try:
        return [any_size if s == "*" else int(s) for s in spatial_shape]
    except (TypeError, ValueError):
        raise BundleError(f"metadata spatial_shape {list(spatial_shape)}: only integers and '*' are supported "
                          f"here") from None


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
    patch_space = _patch_space_shape(net)
    spatial = patch_space if patch_space is not None else _fake_spatial(info["spatial_shape"])
    shape = (batch, int(info["num_channels"]), *spatial)
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
    """MONAI's ``verify_net_in_out`` (net id ``network_def``, inference config, CPU); APF-UNETR gets its
    pseudo-image shape as a metadata override and its leaf mask through ``extra_forward_args``. A bundle with an
    ``image_network`` item also gets :func:`check_image_network` (the path its metadata describes)."""
    from monai.bundle import verify_net_in_out

    root = resolve_bundle(bundle)
    net = _network(root, overrides)
    x, extra = _example_inputs(root, net, overrides=overrides)
    meta_over = {}
    if _patch_space_shape(net) is not None:
        meta_over["_meta_#network_data_format#inputs#image#spatial_shape"] = list(x.shape[2:])
    try:
        verify_net_in_out(net_id=NET_ID, meta_file=str(root / "configs" / "metadata.json"),
                          config_file=str(root / "configs" / INFERENCE_CONFIG), device="cpu",
                          extra_forward_args=extra, bundle_root=str(root), **{**dict(overrides or {}), **meta_over})
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{root / 'configs'}: network_def does not match metadata.json's network_data_format: "
                          f"{e}") from None
    if bundle_parser(root, overrides=overrides).get(IMAGE_NET_ID) is not None:
        check_image_network(root, overrides)


def check_image_network(bundle: str | Path, overrides: Mapping[str, Any] | None = None,
                        any_size: int = 2) -> tuple[int, ...]:
    """The real inference path of an APF bundle against its metadata: MONAI's ``verify_net_in_out`` on the config
    item ``image_network`` (image -> APF -> ``network_def`` -> unpatching; input of the metadata's image shape,
    ``"*"`` = ``any_size``), then the logits ``(1, K, *spatial)`` must have the image's spatial shape, so that
    the label map (argmax) has the input's shape. Returns the label shape."""
    from monai.bundle import verify_net_in_out

    root = resolve_bundle(bundle)
    meta_file = root / "configs" / "metadata.json"
    where = f"{root / 'configs' / INFERENCE_CONFIG}: {IMAGE_NET_ID}"
    try:
        verify_net_in_out(net_id=IMAGE_NET_ID, meta_file=str(meta_file),
                          config_file=str(root / "configs" / INFERENCE_CONFIG), device="cpu", any=any_size,
                          bundle_root=str(root), **dict(overrides or {}))
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{where} does not match metadata.json's network_data_format: {e}") from None
    parser = bundle_parser(root, overrides=overrides)
    fmt = parser.get("_meta_#network_data_format")
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    spatial = _fake_spatial(image["spatial_shape"], any_size)
    net = parser.get_parsed_content(IMAGE_NET_ID, instantiate=True).eval()
    x = torch.rand(1, int(image["num_channels"]), *spatial, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = net(x)
    want = (1, int(pred["num_channels"]), *spatial)
    if tuple(logits.shape) != want:
        raise BundleError(f"{where}: an image {tuple(x.shape)} gives logits {tuple(logits.shape)}, expected {want} "
                          f"(full resolution, {pred['num_channels']} channels of {meta_file.name})")
    label = logits.argmax(dim=1)[0]
    logger.info("%s: %s %s -> logits %s -> label %s", root.name, IMAGE_NET_ID, tuple(x.shape), tuple(logits.shape),
                tuple(label.shape))
    return tuple(label.shape)


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
        with_overrides = f", overrides {json.dumps(dict(overrides), default=str)}" if overrides else ""
        raise BundleError(
            f"{ckpt}: not a checkpoint of bundle '{root.name}' (network_def {type(net).__name__} from "
            f"configs/{INFERENCE_CONFIG}{with_overrides}): "
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
    x, extra = _example_inputs(root, net, batch=1, seed=1, overrides=overrides)
    onnx_export(net_id=NET_ID, filepath=str(filepath), ckpt_file=str(ckpt),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / INFERENCE_CONFIG),
                input_shape=list(x.shape), bundle_root=str(root), **dict(overrides or {}))
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


def _missing_modules(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that do not import (optional dependencies)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def verify_bundle(bundle: str | Path, ckpt: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                  schema: str | Path | None = None, onnx: bool = True, workdir: str | Path | None = None,
                  bundles_dir: str | Path | None = None) -> dict:
    """All checks of ``monai-ext verify``: metadata, network in/out, and TorchScript and ONNX parity with the
    weights of ``ckpt`` -- by default the bundle's ``models/model.pt`` when it exists and no ``overrides``
    change the network, else freshly initialized weights. ``bundle``: a folder, or a name in ``bundles_dir``
    (default ``./bundles``)."""
    root = resolve_bundle(bundle, bundles_dir)
    missing = _missing_modules(("onnx", "onnxruntime")) if onnx else []
    if missing:
        raise BundleError(f"the ONNX check needs {' and '.join(missing)}, not installed in this environment: "
                          f"pip install {' '.join(missing)} (both are in monai_ext's `test` extra), or skip the "
                          f"ONNX check with --no-onnx")
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


