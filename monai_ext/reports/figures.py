"""Report figures (PNG) with matplotlib's object API (no pyplot, so no global state or GUI backend):
ROC curve with a bootstrap band, reliability diagram, per-class Dice box plot, and overlays of image,
ground truth, prediction and APF quadtree leaves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dice_boxplot", "display_image", "overlay_figure", "reliability_figure", "roc_figure"]

_DPI = 110
_POINT_STYLE = {"default": ("o", "tab:orange", "0.5"), "youden": ("s", "tab:green", "Youden (validation)")}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def roc_figure(curves: Mapping[str, Any], metrics: Mapping[str, Any], path: Path) -> Path:
    """ROC curve, its pointwise bootstrap band and the operating points."""
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    band = curves["band"]
    level = round(100 * metrics["bootstrap"]["ci_level"])
    auc = metrics["auroc"]
    if auc.get("ci_low") is not None:  # no band either where too few cases give no CI
        ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color="tab:blue", alpha=0.2, step=None,
                        label=f"{level}% bootstrap band")
        ci = f"{auc['ci_low']:.3f}-{auc['ci_high']:.3f}"
    else:
        ci = auc.get("ci_note", "no CI")
    ax.plot(curves["fpr"], curves["tpr"], color="tab:blue", lw=2, label=f"AUROC {auc['value']:.3f} ({ci})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for key, point in metrics["operating_points"].items():
        marker, color, name = _POINT_STYLE.get(key, ("^", "tab:red", key))
        sens, spec = point["sensitivity"]["value"], point["specificity"]["value"]
        if sens is None or spec is None:
            continue
        ax.plot(1 - spec, sens, marker=marker, color=color, ms=8, ls="none",
                label=f"{name}: t={point['threshold']:.3f}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"ROC (n={metrics['n_cases']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return _save(fig, path)


def reliability_figure(curves: Mapping[str, Any], path: Path) -> Path:
    """Reliability diagram (observed positive fraction per probability bin) and the probability
    histogram of each class."""
    cal = curves["calibration"]
    s, y = curves["scores"], curves["labels"]
    names = curves.get("class_names", ("negative", "positive"))
    fig = _figure(8.6, 4.0)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    filled = cal["count"] > 0
    ax.plot(cal["mean_predicted"][filled], cal["fraction_positive"][filled], "o-", color="tab:blue",
            label=f"model (ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("fraction positive")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    edges = cal["edges"]
    for label, color in ((0, "tab:gray"), (1, "tab:red")):
        n = int(np.sum(y == label))
        ax2.hist(s[y == label], bins=edges, alpha=0.6, color=color, label=f"{names[label]} (n={n})")
    ax2.set_xlabel(f"predicted probability of '{names[1]}'")
    ax2.set_ylabel("cases")
    ax2.set_title("Predicted probabilities by true class")
    ax2.legend(fontsize=8)
    return _save(fig, path)


def dice_boxplot(curves: Mapping[str, Any], path: Path) -> Path:
    """Per-class Dice over cases (NaN cases, where the class is absent, left out), points overlaid."""
    dice, names = np.asarray(curves["dice"]), list(curves["class_names"])
    data = [dice[:, c][~np.isnan(dice[:, c])] for c in range(len(names))]
    fig = _figure(max(4.5, 0.55 * len(names) + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.12, 0.12, d.size), d, "o", ms=3, color="tab:blue", alpha=0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per class over {dice.shape[0]} case(s)")
    for lab in ax.get_xticklabels():
        lab.set_rotation(45 if len(names) > 4 else 0)
        lab.set_ha("right" if len(names) > 4 else "center")
    return _save(fig, path)


def display_image(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` grey (first channel, 1-99 percentile window) or ``(H, W, 3)`` RGB in [0, 1]."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.shape[0] == 3:
        out = np.moveaxis(img, 0, -1)
        lo, hi = np.percentile(out, (0.5, 99.5))
        return np.clip((out - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    out = img[0]
    lo, hi = np.percentile(out, (1, 99))
    return np.clip((out - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def overlay_figure(image: np.ndarray, label: np.ndarray, pred: np.ndarray, path: Path, title: str = "",
                   class_names: Sequence[str] | None = None, leaves: np.ndarray | None = None,
                   scale: float = 1.0) -> Path:
    """One row: image | ground truth | prediction [| APF quadtree leaves].

    Args:
        image: ``(C, H, W)``; label, pred: ``(H, W)`` class indices (0 = background).
        class_names: names of all classes, index 0 = background (for the legend).
        leaves: APF leaf table ``(L, 3)`` of ``(y, x, size)`` in the image's pixels (padding rows with
            size 0 are skipped), drawn as boxes; ``scale`` maps leaf pixels to ``image`` pixels when the
            image was down-sampled for display.
    """
    import matplotlib
    from matplotlib.collections import LineCollection

    disp = display_image(image)
    n_classes = int(max(label.max(initial=0), pred.max(initial=0), len(class_names or []))) + 1
    base = matplotlib.colormaps["tab20"](np.arange(20))
    order = np.r_[np.arange(0, 20, 2), np.arange(1, 20, 2)]  # the saturated colours first
    colors = base[order[np.arange(max(n_classes - 1, 1)) % 20]]  # colour of class k is colors[k - 1]

    def rgba(m: np.ndarray) -> np.ndarray:
        out = np.zeros((*m.shape, 4))
        fg = m > 0
        out[fg] = colors[(m[fg] - 1) % len(colors)]
        out[fg, 3] = 0.55
        return out

    panels = ["image", "ground truth", "prediction"] + (["APF quadtree"] if leaves is not None else [])
    fig = _figure(3.2 * len(panels), 3.6)
    grey = "gray" if disp.ndim == 2 else None
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(disp, cmap=grey, interpolation="nearest")
        if name in ("ground truth", "prediction"):
            ax.imshow(rgba(label if name == "ground truth" else pred), interpolation="nearest")
        if name == "APF quadtree":
            lv = np.asarray(leaves).reshape(-1, 3)
            lv = lv[lv[:, 2] > 0].astype(np.float64)
            n_leaves = len(lv)
            # boxes in display pixels, clipped to the image (leaves may reach into the quadtree's padding)
            h, w = disp.shape[:2]
            y0, x0 = lv[:, 0] * scale - 0.5, lv[:, 1] * scale - 0.5
            y1, x1 = np.minimum(y0 + lv[:, 2] * scale, h - 0.5), np.minimum(x0 + lv[:, 2] * scale, w - 0.5)
            keep = (y0 < h - 0.5) & (x0 < w - 0.5)
            y0, x0, y1, x1 = y0[keep], x0[keep], y1[keep], x1[keep]
            corners = [np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)]
            segs = np.stack([np.stack([corners[i], corners[(i + 1) % 4]], 1) for i in range(4)], 1).reshape(-1, 2, 2)
            ax.add_collection(LineCollection(segs, colors="yellow", linewidths=0.5))
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            name = f"APF quadtree ({n_leaves} leaves)"
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])  # keep the frame: it shows the image's extent on a white background
    present = sorted((set(np.unique(label).tolist()) | set(np.unique(pred).tolist())) - {0})
    if present:
        from matplotlib.patches import Patch

        names = list(class_names or [])
        handles = [Patch(color=colors[(k - 1) % len(colors)], label=names[k] if k < len(names) else f"class {k}")
                   for k in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
