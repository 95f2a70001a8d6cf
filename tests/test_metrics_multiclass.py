"""Multi-class metrics (top-k, balanced accuracy, macro AUROC, per class) by hand, and gradient saliency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_ext.metrics.multiclass import multiclass_metrics, saliency_map


def test_metrics_by_hand():
    # 6 cases, 6 classes; class 5 has no case
    p = np.array([[.5, .1, .1, .1, .1, .1],   # y0: pred 0 (hit)
                  [.1, .2, .5, .1, .05, .05],  # y1: pred 2, class 1 ranked 2nd
                  [.1, .1, .6, .1, .05, .05],  # y2: hit
                  [.3, .1, .2, .25, .1, .05],  # y3: pred 0, class 3 ranked 2nd
                  [.05, .05, .05, .05, .1, .7],  # y4: pred 5, class 4 ranked 2nd
                  [.2, .5, .1, .1, .05, .05]])  # y1: hit
    y = np.array([0, 1, 2, 3, 4, 1])
    m = multiclass_metrics(p, y, top_k=2)
    assert m["top1"] == pytest.approx(3 / 6) and m["top2"] == pytest.approx(1.0)
    # recalls: c0 1, c1 1/2, c2 1, c3 0, c4 0 -> balanced 0.5 (class 5 left out, named in the note)
    assert m["balanced_accuracy"] == pytest.approx(2.5 / 5) and "'5'" in m["note"]
    c1 = m["per_class"][1]
    assert (c1["support"], c1["recall"], c1["precision"]) == (2, 0.5, 1.0)
    assert c1["specificity"] == pytest.approx(1.0)
    # class 0 AUROC by hand: positive score 0.5 vs negatives 0.1, 0.1, 0.3, 0.05, 0.2 -> 1.0; class 3: 0.25 vs
    # 0.1, 0.1, 0.1, 0.05, 0.1 -> 1.0; class 4: 0.1 vs 0.1, 0.05, 0.05, 0.1, 0.05 -> (3 + 2 * 0.5) / 5 = 0.8
    assert [m["per_class"][c]["auroc"] for c in (0, 3, 4)] == pytest.approx([1.0, 1.0, 0.8])
    assert math.isnan(m["per_class"][5]["auroc"]) and math.isnan(m["per_class"][5]["recall"])
    aucs = [r["auroc"] for r in m["per_class"] if not math.isnan(r["auroc"])]
    assert m["macro_auroc"] == pytest.approx(np.mean(aucs)) and len(aucs) == 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels must be in \\[0, 2\\]"):
        multiclass_metrics(np.ones((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="probs must be"):
        multiclass_metrics(np.ones((2, 3)), [0])
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        multiclass_metrics(np.ones((2, 3)), [0, 1], ["a", "b"])


def test_saliency_of_a_linear_model_is_its_weights():
    """For logits = W x, the input gradient of class c is W[c]: the map is |W[c]| (max over channels) / max."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2 * 4 * 4, 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    x = torch.randn(2, 4, 4)
    sal, target = saliency_map(model, x, target=1)
    want = lin.weight[1].detach().reshape(2, 4, 4).abs().amax(0)
    assert target == 1 and sal.shape == (4, 4)
    np.testing.assert_allclose(sal, (want / want.max()).numpy(), rtol=1e-6)
    _, predicted = saliency_map(model, x)
    assert predicted == int(model(x[None]).argmax())
