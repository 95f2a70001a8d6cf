"""MONAI's model-zoo checks on an unpacked bundle, runnable as a plain script with only torch and MONAI installed.

``python zoo_check.py BUNDLE_DIR --schema meta_schema_20240725.json [--export models/model.ts] [--forbid monai_ext]``
runs, as the model zoo's ``ci/verify_bundle.py`` does, MONAI's ``verify_metadata`` (against the local schema
copy: nothing is downloaded), ``verify_net_in_out`` (net id ``network_def``, ``configs/inference.yaml``) and
``ckpt_export`` of ``models/model.pt``, then loads the TorchScript file and runs it on an input of the metadata's
shape. The bundle folder goes first on ``sys.path`` (its vendored ``scripts`` package); ``--forbid NAME`` makes
any import of ``NAME`` fail, to prove that the bundle does not need it. This file imports nothing from
monai_ext (``monai-ext package`` runs it on the packaged copy; scripts/check_packaged.sh runs it in a fresh venv
and in the MONAI 1.5.2 environment).
"""

from __future__ import annotations

import argparse
import importlib.abc
import inspect
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("zoo_check")

NET_ID = "network_def"
#: an APF bundle's whole inference path (APF -> network_def -> unpatching), what its metadata describes
IMAGE_NET_ID = "image_network"
CONFIG = "configs/inference.yaml"


class _Forbid(importlib.abc.MetaPathFinder):
    """Refuses to import the top-level package ``name`` (and its submodules)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname.split(".")[0] == self.name:
            raise ImportError(f"{fullname}: importing {self.name} is forbidden in this check")
        return None


def patch_space_shape(net) -> list[int] | None:  # noqa: ANN001 - torch imported lazily
    """``[S, S]`` of the APF pseudo-image an APF-UNETR ``network_def`` takes (``S = sqrt(num_tokens) *
    patch_size``), else None (the network takes the metadata's image)."""
    if not (hasattr(net, "num_tokens") and hasattr(net, "patch_size")
            and "mask" in inspect.signature(net.forward).parameters):
        return None
    side = math.isqrt(int(net.num_tokens)) * int(net.patch_size)
    return [side, side]


def example_inputs(meta: dict, net, batch: int = 1, seed: int = 0):  # noqa: ANN001 - torch imported lazily
    """A random input ``(batch, C, *spatial)`` for ``network_def`` (the metadata's image shape, ``"*"`` -> 2; the
    pseudo-image for APF-UNETR) and the extra forward arguments: inputs besides ``image`` that ``forward`` takes
    (a boolean one, APF-UNETR's leaf ``mask`` ``(batch, L)``, has its last quarter marked as padding); a network
    with ``mask`` and ``num_tokens`` not listed in the metadata gets one."""
    import torch

    inputs = meta["network_data_format"]["inputs"]
    info = inputs["image"]
    spatial = patch_space_shape(net) or [2 if s == "*" else int(s) for s in info["spatial_shape"]]
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, int(info["num_channels"]), *spatial), generator=gen)
    params = inspect.signature(net.forward).parameters
    specs = {k: v for k, v in inputs.items() if k != "image" and k in params}
    if "mask" in params and "mask" not in specs and hasattr(net, "num_tokens"):
        specs["mask"] = {"dtype": "bool", "spatial_shape": [int(net.num_tokens)]}
    extra = {}
    for key, spec in specs.items():
        shape = [int(s) for s in spec["spatial_shape"]]
        if spec.get("dtype") == "bool":
            value = torch.ones(batch, *shape, dtype=torch.bool)
            value[..., shape[-1] - max(1, shape[-1] // 4):] = False
        else:
            channels = [int(spec["num_channels"])] if int(spec.get("num_channels", 0)) else []
            value = torch.rand(batch, *channels, *shape, generator=gen)
        extra[key] = value
    return x, extra


def check(bundle: Path, schema: Path, export: Path | None = None) -> dict:
    """verify_metadata, verify_net_in_out (``network_def``; for an APF bundle with the pseudo-image shape, and
    also on ``image_network``, the path its metadata describes) and ckpt_export (to ``export``, default a temporary
    file) on ``bundle``; returns what passed and the TorchScript output shape."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

    bundle = bundle.resolve()
    meta_file, config_file = bundle / "configs" / "metadata.json", bundle / CONFIG
    meta = json.loads(meta_file.read_text())
    verify_metadata(meta_file=str(meta_file), filepath=str(schema.resolve()))
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.read_meta(str(meta_file))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content(NET_ID)
    x, extra = example_inputs(meta, net)
    over = {}
    if patch_space_shape(net) is not None:
        over["_meta_#network_data_format#inputs#image#spatial_shape"] = list(x.shape[2:])
    common = {"meta_file": str(meta_file), "config_file": str(config_file), "device": "cpu",
              "bundle_root": str(bundle)}
    verify_net_in_out(net_id=NET_ID, extra_forward_args=extra, **common, **over)
    result = {"metadata": "ok", "net_in_out": "ok"}
    if parser.get(IMAGE_NET_ID) is not None:
        verify_net_in_out(net_id=IMAGE_NET_ID, any=2, **common)
        result["image_network_in_out"] = "ok"
    with tempfile.TemporaryDirectory() as tmp:
        target = export.resolve() if export else Path(tmp) / "model.ts"
        ckpt_export(net_id=NET_ID, filepath=str(target), ckpt_file=str(bundle / "models" / "model.pt"),
                    meta_file=str(meta_file), config_file=str(config_file), bundle_root=str(bundle))
        ts = torch.jit.load(str(target), map_location="cpu").eval()
        x, extra = example_inputs(meta, net, batch=2, seed=1)
        with torch.no_grad():
            out = ts(x, *extra.values())
    return {**result, "ckpt_export": "ok", "torchscript_output": list(out.shape)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="unpacked bundle folder (configs/, models/model.pt)")
    p.add_argument("--schema", type=Path, required=True, help="local copy of MONAI's metadata schema")
    p.add_argument("--export", type=Path, default=None, help="where ckpt_export writes (default: a temporary file)")
    p.add_argument("--forbid", action="append", default=[], help="a package that must not be imported")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for name in args.forbid:
        sys.meta_path.insert(0, _Forbid(name))
    sys.path.insert(0, str(args.bundle.resolve()))
    import monai

    result = {"monai": monai.__version__, **check(args.bundle, args.schema, args.export)}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
