"""Per-case records of an evaluation run (the format :mod:`monai_ext.reports.summary` documents).

- :func:`case_id_of`: the case id of an evaluated item (its file name without the image suffix);
- :func:`classification_record`: label and positive-class probability of one post-processed item;
- :func:`segmentation_records`: per-case Dice / HD95 from the metric details MONAI's metric handlers already
  computed (``engine.state.metric_details``, ``save_details=True``): nothing is computed twice;
- :func:`scored_class_names`: the class names of the scored (metric) channels;
- :func:`mean_leaves`: APF quadtree leaves per 2D image (each axial slice of a volume).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "case_id_of",
    "classification_record",
    "mean_leaves",
    "scored_class_names",
    "segmentation_records",
    "slices_of",
]

_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".npy", ".npz",
             ".nrrd", ".mha", ".mhd", ".svs")


def case_id_of(meta_source: Any) -> str | None:
    """Case id from a MetaTensor's (or meta dict's) ``filename_or_obj``: the file name without its
    image suffix; ``None`` when unknown."""
    meta = getattr(meta_source, "meta", meta_source)
    if not isinstance(meta, Mapping):
        return None
    fn = meta.get("filename_or_obj")
    if isinstance(fn, (list, tuple)):
        fn = fn[0] if fn else None
    if fn is None or fn == "":
        return None
    name = Path(str(fn)).name
    low = name.lower()
    for suf in _SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def classification_record(item: Mapping[str, Any], pred_key: str = "pred", label_key: str = "label",
                          positive_index: int = 1) -> dict[str, Any]:
    """``{"label": 0/1, "probability": p}`` of one post-processed item: ``pred`` holds class probabilities
    (or one probability), ``label`` a class index or a one-hot vector; several classes are scored
    one-vs-rest (``positive_index`` against all others)."""
    pred = torch.as_tensor(item[pred_key]).detach().float().reshape(-1).cpu()
    if pred.numel() == 1:
        prob = float(pred[0])
    else:
        if not 0 <= positive_index < pred.numel():
            raise ValueError(f"positive_index {positive_index} outside the {pred.numel()} prediction channels")
        if abs(float(pred.sum()) - 1.0) > 1e-3:
            raise ValueError(f"'{pred_key}' does not hold class probabilities (sum {float(pred.sum()):.4f}): "
                             "add Activationsd(softmax=True) to the evaluator's postprocessing")
        prob = float(pred[positive_index])
    if not 0.0 <= prob <= 1.0 or math.isnan(prob):
        raise ValueError(f"'{pred_key}' probability {prob} outside [0, 1]: post-process with softmax / sigmoid")
    lab = torch.as_tensor(item[label_key]).detach().reshape(-1).cpu()
    if lab.numel() == 1:
        label = int(lab[0])
    elif lab.numel() == pred.numel() and bool(((lab == 0) | (lab == 1)).all()) and float(lab.sum()) == 1:
        label = int(torch.argmax(lab))  # one-hot label (AsDiscreted(to_onehot=K))
    else:
        raise ValueError(f"cannot read a class index from label of shape {tuple(lab.shape)}")
    if pred.numel() > 1:  # one-vs-rest: the positive class against all others
        label = int(label == positive_index)
    if label not in (0, 1):
        raise ValueError(f"label {label} is not 0 / 1 (binary classification report)")
    return {"label": label, "probability": prob}


def scored_class_names(class_names: Sequence[str] | None, n_scored: int) -> list[str]:
    """Names of the ``n_scored`` metric channels: ``class_names`` as given when it has ``n_scored`` names, without
    its first (background) name when it has one more; ``class_1 ...`` when ``None``."""
    if class_names is None:
        return [f"class_{i + 1}" for i in range(n_scored)]
    names = list(class_names)
    if len(names) == n_scored + 1:
        return names[1:]
    if len(names) != n_scored:
        raise ValueError(f"class_names has {len(names)} names but the metric details have {n_scored} channels "
                         f"(background included or not)")
    return names


def _as_rows(values: Any, what: str) -> np.ndarray:
    arr = torch.as_tensor(values).detach().cpu().double().numpy() if not isinstance(values, np.ndarray) else values
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"metric details '{what}' must be (cases, classes), got shape {arr.shape}")
    return arr


def segmentation_records(cases: Sequence[Mapping[str, Any]], dice: Any, hd95: Any = None,
                         dice_key: str = "dice", hd95_key: str = "hd95") -> list[dict[str, Any]]:
    """Per-case records: ``cases`` (``case_id`` and optional ``num_images`` / ``num_leaves``, in evaluation
    order) joined row by row with the metric details ``dice`` and ``hd95`` (``(cases, classes)``, NaN where
    MONAI gives NaN). The row counts must agree."""
    d = _as_rows(dice, dice_key)
    h = _as_rows(hd95, hd95_key) if hd95 is not None else None
    for what, arr in ((dice_key, d), (hd95_key, h)):
        if arr is not None and arr.shape[0] != len(cases):
            raise RuntimeError(f"metric details '{what}' hold {arr.shape[0]} case(s) but {len(cases)} case(s) were "
                               f"evaluated: the metric handler must see every case once (save_details=True)")
    if h is not None and h.shape != d.shape:
        raise ValueError(f"metric details '{hd95_key}' {h.shape} and '{dice_key}' {d.shape} differ in shape")
    return [{**dict(c), "dice": d[i].tolist(), "hd95": h[i].tolist() if h is not None else None}
            for i, c in enumerate(cases)]


def slices_of(image: Any, spatial: int) -> list[np.ndarray]:
    """The 2D images ``(C, H, W)`` of a channel-first image: itself (2D) or its axial slices (3D)."""
    arr = torch.as_tensor(image).detach().float().cpu().numpy()
    return [arr[..., z] for z in range(arr.shape[-1])] if spatial == 3 else [arr]


def mean_leaves(image: Any, spatial: int, apf: Mapping[str, Any]) -> float:
    """Mean number of real APF quadtree leaves over the 2D images of ``image`` (planned with the bundle's
    ``apf`` parameters)."""
    from ..transforms import plan_quadtree

    return float(np.mean([plan_quadtree(sl, **apf)["num_leaves"] for sl in slices_of(image, spatial)]))
