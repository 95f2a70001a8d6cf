"""How hard is a prepared 2D classification dataset? Logistic regression on its pixels (not a test, a yardstick).

    python scripts/pixel_baseline.py PREPARED_DIR RESOLUTION [--pixels 32] [--C 0.01]

Reads ``PREPARED_DIR/datalist_<RESOLUTION>.json`` (as written by ``monai-ext prepare airogs|isic|vindr_cxr``),
box-resizes every image to ``--pixels`` square, standardises the pixels on the training split, fits scikit-learn's
``LogisticRegression`` on the training split and prints the test AUROC and AUPRC.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger("pixel_baseline")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prepared", type=Path)
    p.add_argument("resolution", type=int)
    p.add_argument("--pixels", type=int, default=32)
    p.add_argument("--C", type=float, default=0.01)
    a = p.parse_args()
    body = json.loads((a.prepared / f"datalist_{a.resolution}.json").read_text())

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = [np.asarray(Image.open(a.prepared / e["image"]).convert("RGB").resize((a.pixels, a.pixels), Image.BOX),
                        np.float32).ravel() / 255 for e in body[split]]
        return np.stack(x), np.array([int(e["label"]) for e in body[split]])

    (xtr, ytr), (xte, yte) = load("training"), load("test")
    scaler = StandardScaler().fit(xtr)
    model = LogisticRegression(C=a.C, max_iter=2000).fit(scaler.transform(xtr), ytr)
    s = model.predict_proba(scaler.transform(xte))[:, 1]
    logger.info("training %d (%d positive), test %d (%d positive); %d px pixels, C=%g: test AUROC %.3f, AUPRC %.3f",
                len(ytr), ytr.sum(), len(yte), yte.sum(), a.pixels, a.C, roc_auc_score(yte, s),
                average_precision_score(yte, s))


if __name__ == "__main__":
    main()
