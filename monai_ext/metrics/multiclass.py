"""Multi-class classification metrics of the efficient-transformers benchmark, and gradient saliency maps.

:func:`multiclass_metrics`: top-1 / top-5 accuracy (the benchmark's metrics), balanced accuracy and macro
one-vs-rest AUROC (imbalance-aware, the metrics its final report promised), and a per-class table (support,
recall = sensitivity, specificity, precision, one-vs-rest AUROC), through scikit-learn. :func:`saliency_map`: the
benchmark's qualitative figure, the magnitude of the input gradient of the predicted class (MONAI's
``VanillaGrad``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["multiclass_metrics", "saliency_map"]


def multiclass_metrics(probs: Any, labels: Any, class_names: Sequence[str] | None = None,
                       top_k: int = 5) -> dict[str, Any]:
    """Metrics of class scores ``probs`` ``(N, K)`` (probabilities or logits: only their order matters, AUROC
    included) for integer ``labels`` ``(N,)``.

    Returns ``{"top1", "top{k}", "balanced_accuracy", "macro_auroc", "n", "per_class": [{"class", "name",
    "support", "recall", "specificity", "precision", "auroc"}, ...], "note"}``. Classes absent from ``labels`` have
    NaN recall and AUROC and are left out of the balanced accuracy and the macro AUROC (``note`` says which).
    """
    from sklearn.metrics import roc_auc_score, top_k_accuracy_score

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(int).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise ValueError(f"probs must be (N, K) and labels (N,) with N > 0, got {p.shape} and {y.shape}")
    n, k = p.shape
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in [0, {k - 1}], got values {sorted(set(y.tolist()) - set(range(k)))}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    pred = p.argmax(axis=1)
    per_class, recalls, aucs, absent = [], [], [], []
    for c in range(k):
        pos, hit = y == c, pred == c
        support = int(pos.sum())
        recall = float((hit & pos).sum() / support) if support else math.nan
        neg = ~pos
        specificity = float((~hit & neg).sum() / neg.sum()) if neg.any() else math.nan
        precision = float((hit & pos).sum() / hit.sum()) if hit.any() else math.nan
        auroc = float(roc_auc_score(pos, p[:, c])) if 0 < support < n else math.nan
        if support:
            recalls.append(recall)
        else:
            absent.append(names[c])
        if not math.isnan(auroc):
            aucs.append(auroc)
        per_class.append({"class": c, "name": names[c], "support": support, "recall": recall,
                          "specificity": specificity, "precision": precision, "auroc": auroc})
    kk = min(top_k, k)
    return {
        "n": n,
        "top1": float((pred == y).mean()),
        f"top{kk}": float(top_k_accuracy_score(y, p, k=kk, labels=list(range(k)))) if k > 2 else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_auroc": float(np.mean(aucs)) if aucs else math.nan,
        "per_class": per_class,
        "note": f"classes without cases (left out of balanced accuracy and macro AUROC): {absent}" if absent else "",
    }


def saliency_map(model: Any, image: Any, target: int | None = None) -> tuple[np.ndarray, int]:
    """Gradient saliency of one image ``(C, *spatial)`` (a tensor): ``|d logit_target / d x|``, maximum over
    channels, scaled to [0, 1]; ``target`` defaults to the predicted class. Returns ``(map (*spatial), target)``.
    The model is put in eval mode (MONAI's ``VanillaGrad``)."""
    import torch
    from monai.visualize import VanillaGrad

    model.eval()
    x = torch.as_tensor(image, dtype=torch.float32).unsqueeze(0).detach().clone()
    if target is None:
        with torch.no_grad():
            target = int(model(x).argmax(dim=1).item())
    grad = VanillaGrad(model)(x, index=target)[0]  # (C, *spatial)
    sal = grad.abs().amax(dim=0)
    top = sal.max()
    return (sal / top if top > 0 else sal).cpu().numpy(), int(target)
