"""Variants of each bundle for ``monai-ext paper-table``: override sets, kept as data.

A bundle may define its own under ``"paper_table"`` in ``configs/metadata.json`` (same layout as one entry of
:data:`VARIANTS`; it replaces the entry here), so a bundle's variants live with the bundle.

Layout of an entry: ``variants`` (name -> ``{config key: value}`` overrides, or ``{"files": [config files after the
overlay's], "overrides": {...}}`` where ``{out}`` in a string stands for the table's folder), ``default`` (names
run when ``--variants`` is not given) and ``overlays``: ``cpu`` / ``paper`` -> ``{"files": [config files after
train.yaml], "overrides": {...}}``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["VARIANTS", "bundle_variants"]

_ATTENTION = {a: {"network_def#attention": a} for a in ("softmax", "sima", "softmax_free")}
_SFN_DEFAULT = ["softmax", "sima", "softmax_free"]
# APF vs UNETR at the same smallest patch: uniform patching with the sequence length of the full grid
_APF = {"apf": {}, "uniform": {"apf#mode": "uniform",
                               "apf#num_tokens": "$(@image_size // @apf#patch_size) ** 2"}}

# the efficient-transformers benchmark's attentions, then the project's two
_ZOO = ["softmax", "linformer", "performer", "fastformer", "xca", "window", "softmax_free", "sima"]

# AIROGS / ISIC CPU size (the demo's): 64 px RGB at patch 16 (16 tokens), 20 epochs
_PHOTO_CPU = {"image_size": 64, "patch_size": 16, "epochs": 20, "num_workers": 0}

#: bundle -> variants, default variant names and overlays (see the module docstring)
VARIANTS: dict[str, dict[str, Any]] = {
    "vindr_cxr_cardiomegaly_classification": {
        "variants": _ATTENTION, "default": _SFN_DEFAULT,
        "overlays": {
            # the demo's CPU size: 64 px at patch 8 (64 tokens)
            "cpu": {"files": [], "overrides": {"image_size": 64, "patch_size": 8, "epochs": 30, "num_workers": 0}},
            "paper": {"files": ["configs/paper.yaml"], "overrides": {}},
        },
    },
    "duke_breast_mri_classification": {
        "variants": _ATTENTION, "default": _SFN_DEFAULT,
        "overlays": {"cpu": {"files": [], "overrides": {"num_workers": 0}},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
    "apf_unetr_paip_segmentation": {
        "variants": _APF, "default": ["apf", "uniform"],
        "overlays": {"cpu": {"files": [], "overrides": {"num_workers": 0}},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
    "apf_unetr_btcv_segmentation": {
        "variants": _APF, "default": ["apf", "uniform"],
        "overlays": {"cpu": {"files": [], "overrides": {"num_workers": 0}},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
    "airogs_glaucoma_classification": {
        # Sec. 3.4: softmax-free initialised from this table's own softmax checkpoint (softmax runs first)
        "variants": {**_ATTENTION, "finetune_softmax_free": {
            "files": ["configs/finetune_from_softmax.yaml"], "overrides": {"ckpt": "{out}/softmax/models/model.pt"}}},
        "default": ["softmax", "sima", "softmax_free", "finetune_softmax_free"],
        "overlays": {"cpu": {"files": [], "overrides": _PHOTO_CPU},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
    # every attention in the pyramid backbone, and MONAI's ResNet-50 (overlay configs/resnet50.yaml)
    "brain_mri_efficient_attention_classification": {
        "variants": {**{a: {"network_def#attention": a} for a in _ZOO},
                     "resnet50": {"files": ["configs/resnet50.yaml"], "overrides": {}}},
        "default": [*_ZOO, "resnet50"],
        "overlays": {"cpu": {"files": [], "overrides": {"num_workers": 0}},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
    "isic_melanoma_classification": {
        "variants": _ATTENTION, "default": _SFN_DEFAULT,
        "overlays": {"cpu": {"files": [], "overrides": _PHOTO_CPU},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
    # the softmax-free paper's Table 2 row for TCGA-NSCLC: the same WSI transformer with each attention
    "tcga_nsclc_subtyping": {
        "variants": _ATTENTION, "default": _SFN_DEFAULT,
        "overlays": {"cpu": {"files": [], "overrides": {"num_workers": 0}},
                     "paper": {"files": ["configs/paper.yaml"], "overrides": {}}},
    },
}


def bundle_variants(bundle_dir: str | Path) -> dict[str, Any]:
    """The variant entry of the bundle in ``bundle_dir``: its metadata's ``"paper_table"``, else :data:`VARIANTS`."""
    root = Path(bundle_dir)
    meta_path = root / "configs" / "metadata.json"
    own = json.loads(meta_path.read_text()).get("paper_table") if meta_path.is_file() else None
    if own:
        logger.info("variants from %s", meta_path)
        return copy.deepcopy(own)
    if root.name not in VARIANTS:
        raise ValueError(f"{root}: no variants known for bundle {root.name!r} (known: {sorted(VARIANTS)}); "
                         f"define them under 'paper_table' in {meta_path}")
    return copy.deepcopy(VARIANTS[root.name])
