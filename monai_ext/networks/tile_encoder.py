"""Tile encoders of the WSI feature pipeline (``monai-ext features``): RGB tiles -> feature vectors.

- ``resnet50``: MONAI's 2D ResNet-50 (``monai.networks.nets.resnet50``, no torchvision), features after the global
  average pool (2048-d, before the ``fc`` head), weights from a user file read by
  :func:`monai_ext.utils.checkpoint.load_checkpoint` (``weights_only=True``). Nothing is downloaded; a random
  initialisation only when asked for explicitly (tests).
- ``torchscript:PATH``: any TorchScript module mapping ``(B, 3, H, W)`` normalised tiles to ``(B, D)``.

Weights file layouts (:func:`map_resnet_state_dict`): MONAI's ResNet uses torchvision's parameter names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer1.0.downsample.0`` / ``.1``), with ``bias_downsample=False``
as in torchvision. RetCCL's ResNet-50 (Wang et al. 2023, ``best_ckpt.pth``, their ``ResNet.resnet50`` with
``fc = nn.Identity()``) has exactly these names; checkpoints of the same network saved by other tools carry a
prefix that is removed: ``module.`` (DataParallel / DDP), ``encoder_q.`` / ``encoder.`` (MoCo-style contrastive
training, RetCCL's training code), ``backbone.``, ``model.``, ``resnet.``; ``fc.*`` / ``head.*`` entries (the
projection head, 128-d in RetCCL) are dropped because features are taken before it. Everything else must match
the network's names and shapes exactly, else :class:`~monai_ext.utils.checkpoint.CheckpointMismatchError`.

Input normalisation: ImageNet mean / std (as RetCCL and torchvision ResNets were trained).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from monai_ext.utils.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    compare_state_dict,
    load_checkpoint,
    state_dict_of,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TileEncoder", "build_tile_encoder", "map_resnet_state_dict",
           "resnet50_features"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: prefixes removed from weight names (in this order, repeatedly): see the module docstring
RESNET_PREFIXES = ("module.", "encoder_q.", "encoder.", "backbone.", "model.", "resnet.", "_orig_mod.")
#: weights of heads after the pooled features, dropped
RESNET_HEADS = ("fc.", "head.", "projector.", "classifier.")


def resnet50_features() -> nn.Module:
    """MONAI's 2D ResNet-50 with torchvision's layout, returning the pooled 2048-d features ``(B, 2048)``."""
    from monai.networks.nets import resnet50

    return resnet50(spatial_dims=2, n_input_channels=3, feed_forward=False, bias_downsample=False,
                    shortcut_type="B", conv1_t_size=7, conv1_t_stride=2)


def map_resnet_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """RetCCL / torchvision / MoCo-style ResNet-50 weights -> the names of :func:`resnet50_features`.

    Returns ``(mapped state dict, dropped names)``: prefixes of :data:`RESNET_PREFIXES` removed, head weights
    (:data:`RESNET_HEADS`) and ``num_batches_tracked`` counters of other layouts kept as they are (they exist in
    the network too)."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for name, value in state.items():
        key = str(name)
        changed = True
        while changed:
            changed = False
            for pre in RESNET_PREFIXES:
                if key.startswith(pre):
                    key, changed = key[len(pre):], True
        if key.startswith(RESNET_HEADS):
            dropped.append(str(name))
            continue
        out[key] = value
    return out, dropped


class TileEncoder(nn.Module):
    """ImageNet normalisation + a feature network: ``(B, 3, H, W)`` float in [0, 1] -> ``(B, D)``."""

    def __init__(self, backbone: nn.Module, name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone((x - self.mean) / self.std)
        return out.flatten(1) if out.dim() > 2 else out


def _load_resnet(weights: str | os.PathLike) -> nn.Module:
    net = resnet50_features()
    raw = state_dict_of(load_checkpoint(weights), weights, strip_prefixes=False)
    state, dropped = map_resnet_state_dict(raw)
    diff = compare_state_dict(state, net.state_dict())
    if not diff.ok:
        parts = [f"missing key(s): {', '.join(diff.missing[:5])}" if diff.missing else "",
                 f"unexpected key(s): {', '.join(diff.unexpected[:5])}" if diff.unexpected else "",
                 f"shape mismatch: {'; '.join(diff.shapes[:3])}" if diff.shapes else ""]
        raise CheckpointMismatchError(f"{weights}: not ResNet-50 weights in torchvision / RetCCL layout "
                                      f"({'; '.join(p for p in parts if p)})")
    net.load_state_dict(state, strict=True)
    if dropped:
        logger.info("%s: %d head weight(s) not used (features are taken before the head): %s", weights,
                    len(dropped), ", ".join(dropped[:4]))
    return net


def build_tile_encoder(encoder: str = "resnet50", weights: str | os.PathLike | None = None,
                       random_init: bool = False) -> TileEncoder:
    """The encoder named ``resnet50`` (``weights`` required unless ``random_init``) or ``torchscript:PATH``."""
    if encoder == "resnet50":
        if weights is None and not random_init:
            raise ValueError("--encoder resnet50 needs --weights PATH (e.g. RetCCL's best_ckpt.pth or torchvision "
                             "resnet50 weights; nothing is downloaded), or --random-init for a random network")
        if weights is not None and random_init:
            raise ValueError("give --weights or --random-init, not both")
        backbone = resnet50_features() if random_init else _load_resnet(weights)  # type: ignore[arg-type]
        return TileEncoder(backbone, "resnet50 (random init)" if random_init else f"resnet50 ({Path(weights).name})")
    if encoder.startswith("torchscript:"):
        path = Path(encoder.split(":", 1)[1])
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript encoder {path} not found")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: not a TorchScript module ({type(e).__name__}: {e})") from None
        return TileEncoder(module, f"torchscript ({path.name})")
    raise ValueError(f"unknown encoder {encoder!r}: use resnet50 or torchscript:PATH")
