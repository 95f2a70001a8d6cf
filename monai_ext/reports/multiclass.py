"""Multi-class section of the evaluation report (``EvaluationReport(task="multiclass")``), e.g. the 10 brain MRI
classes of the efficient-transformers benchmark.

- :func:`multiclass_record`: label and class probabilities of one post-processed item;
- :func:`multiclass_summary`: ``metrics.json`` content: top-1 / top-5 accuracy, balanced accuracy, macro one-vs-rest
  AUROC and the per-class table (:func:`monai_ext.metrics.multiclass.multiclass_metrics`), the confusion matrix;
- :func:`write_multiclass_csv`: ``per_case.csv`` (label, predicted class, one probability column per class);
- :func:`saliency_items` / :func:`saliency_figure`: gradient saliency maps (the benchmark's qualitative figure) of
  kept images, with MONAI's ``VanillaGrad`` through :func:`monai_ext.metrics.multiclass.saliency_map`;
- :func:`multiclass_blocks`: the report's blocks for :mod:`~monai_ext.reports.render`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics.multiclass import multiclass_metrics, saliency_map

__all__ = ["multiclass_blocks", "multiclass_record", "multiclass_summary", "saliency_figure", "saliency_items",
           "write_multiclass_csv"]


def multiclass_record(item: Mapping[str, Any], pred_key: str = "pred", label_key: str = "label") -> dict[str, Any]:
    """``{"label": k, "probabilities": [p_0, ..., p_{K-1}]}`` of one item: ``pred`` ``(K,)`` class probabilities
    (post-processed with softmax), ``label`` a class index or a one-hot ``(K,)`` vector."""
    pred = torch.as_tensor(item[pred_key]).detach().float().reshape(-1).cpu()
    if pred.numel() < 3:
        raise ValueError(f"'{pred_key}' has {pred.numel()} channel(s): the multiclass report needs >= 3 classes "
                         "(use task='classification' for two)")
    if abs(float(pred.sum()) - 1.0) > 1e-3 or bool((pred < 0).any()):
        raise ValueError(f"'{pred_key}' does not hold class probabilities (sum {float(pred.sum()):.4f}): add "
                         "Activationsd(softmax=True) to the evaluator's postprocessing")
    lab = torch.as_tensor(item[label_key]).detach().reshape(-1).cpu()
    if lab.numel() == 1:
        label = int(lab[0])
    elif lab.numel() == pred.numel() and bool(((lab == 0) | (lab == 1)).all()) and float(lab.sum()) == 1:
        label = int(torch.argmax(lab))  # one-hot label (AsDiscreted(to_onehot=K))
    else:
        raise ValueError(f"cannot read a class index from label of shape {tuple(lab.shape)}")
    if not 0 <= label < pred.numel():
        raise ValueError(f"label {label} outside the {pred.numel()} classes of '{pred_key}'")
    return {"label": label, "probabilities": pred.tolist()}


def _arrays(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray([r["probabilities"] for r in records], dtype=np.float64)
    labels = np.asarray([int(r["label"]) for r in records])
    return probs, labels


def multiclass_summary(records: Sequence[Mapping[str, Any]], class_names: Sequence[str] | None = None,
                       top_k: int = 5) -> dict[str, Any]:
    """Metrics of ``records`` (sorted by case id by the caller): ``task``, ``n_cases``, ``class_names``, ``top1``,
    ``top{k}``, ``balanced_accuracy``, ``macro_auroc``, ``per_class``, ``confusion_matrix`` (rows: true class,
    columns: predicted), ``chance`` (balanced accuracy of a constant guess: 1 / K) and ``note``."""
    probs, labels = _arrays(records)
    k = probs.shape[1]
    names = list(class_names) if class_names else [f"class_{c}" for c in range(k)]
    m = multiclass_metrics(probs, labels, names, top_k=top_k)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, probs.argmax(axis=1)), 1)
    out = {key: v for key, v in m.items() if key != "n"}
    out.update({"task": "multiclass", "n_cases": int(m["n"]), "class_names": names, "num_classes": k,
                "top_k": min(top_k, k), "chance": 1.0 / k, "confusion_matrix": cm.tolist()})
    return out


def write_multiclass_csv(path: Path, records: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> None:
    """One row per case (in the given order): ``case_id, label, predicted, probability_<class>...``."""
    from .writer import column_name

    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["case_id", "label", "predicted", *(f"probability_{column_name(n)}" for n in class_names)])
        for r in records:
            p = np.asarray(r["probabilities"], dtype=np.float64)
            w.writerow([r["case_id"], int(r["label"]), int(p.argmax()), *(f"{v:.6f}" for v in p)])


def saliency_items(network: torch.nn.Module, kept: Sequence[Mapping[str, Any]],
                   class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Saliency of the predicted class for each kept ``{"image": (C, *spatial) tensor, "label", "case_id"}``;
    returns ``{"image", "saliency" (*spatial), "label", "predicted", "case_id"}`` dicts (2D images only)."""
    net = getattr(network, "module", network)  # DDP -> the module
    device = next(net.parameters()).device
    was_training = net.training
    out = []
    try:
        with torch.enable_grad():
            for it in kept:
                img = torch.as_tensor(it["image"]).float()
                if img.ndim != 3:
                    continue  # a 3D volume has no single-image figure
                sal, target = saliency_map(net, img.to(device))
                out.append({"image": img.cpu().numpy(), "saliency": sal, "label": int(it["label"]),
                            "predicted": target, "case_id": str(it["case_id"])})
    finally:
        net.train(was_training)
    return out


def saliency_figure(items: Sequence[Mapping[str, Any]], class_names: Sequence[str], path: Path) -> Path:
    """Two rows per up to 5 images: the image, then its gradient saliency map over it."""
    from .figures import _figure, _save, display_image

    cols = min(5, len(items))
    rows = 2 * math.ceil(len(items) / cols)
    fig = _figure(2.2 * cols, 2.3 * rows)
    for i, it in enumerate(items):
        r, c = 2 * (i // cols), i % cols
        disp = display_image(it["image"])
        ax = fig.add_subplot(rows, cols, r * cols + c + 1)
        ax.imshow(disp, cmap="gray" if disp.ndim == 2 else None)
        ax.set_title(f"true: {class_names[it['label']]}\npred: {class_names[it['predicted']]}", fontsize=7)
        ax.axis("off")
        ax = fig.add_subplot(rows, cols, (r + 1) * cols + c + 1)
        ax.imshow(disp if disp.ndim == 2 else disp.mean(axis=-1), cmap="gray")
        ax.imshow(it["saliency"], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"saliency ({it['case_id']})", fontsize=6)
        ax.axis("off")
    return _save(fig, path)


def _f(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def multiclass_blocks(m: Mapping[str, Any], split: str = "test") -> list[tuple]:
    """Report blocks: the summary metrics, the per-class table and the confusion matrix."""
    k = m["top_k"]
    out: list[tuple] = [
        ("h2", "Multi-class accuracy"),
        ("table", ["metric", "value"], [
            ["top-1 accuracy", _f(m["top1"])], [f"top-{k} accuracy", _f(m.get(f"top{k}"))],
            [f"balanced accuracy (chance {_f(m['chance'])})", _f(m["balanced_accuracy"])],
            ["macro one-vs-rest AUROC", _f(m["macro_auroc"])]]),
        ("p", f"Split '{split}': {m['n_cases']} cases, {m['num_classes']} classes. Balanced accuracy: mean recall "
              f"over the classes with cases; no bootstrap CIs in this section." + (f" Note: {m['note']}."
                                                                                    if m.get("note") else "")),
        ("h2", "Per class"),
        ("table", ["class", "support", "recall (sensitivity)", "specificity", "precision", "AUROC (one-vs-rest)"],
         [[r["name"], str(r["support"]), _f(r["recall"]), _f(r["specificity"]), _f(r["precision"]), _f(r["auroc"])]
          for r in m["per_class"]]),
        ("h2", "Confusion matrix"),
        ("table", ["true \\ predicted", *(str(c) for c in range(m["num_classes"]))],
         [[f"{c}: {n}", *(str(v) for v in row)] for c, (n, row) in enumerate(zip(m["class_names"],
                                                                                 m["confusion_matrix"]))]),
    ]
    return out
