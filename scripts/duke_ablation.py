"""Quick-turnaround ablation of the DUKE bundle's network settings (the "Results" tables of
bundles/duke_breast_mri_classification/docs/README.md).

The bundle's network class (``monai_ext.networks.ViT``), optimiser (AdamW, weight decay 0.05),
cosine schedule, batch size and z-score normalization, in one in-memory loop instead of the Ignite
workflow, with only random flips (left-right and cranio-caudal) as augmentation: about a third of the
bundle's time per epoch. Settings are chosen on validation AUROC; the test AUROC at the best
validation epoch is logged for reference. The bundle itself runs the same variants by override
(``--presets#cpu#patch_size``, ``--presets#cpu#pooling``, ``--presets#cpu#layer_scale``,
``--network_def#attention``).

    python scripts/duke_ablation.py --patch 8 8 4                     # the cpu preset
    python scripts/duke_ablation.py --patch 16 16 4                   # bundle 0.1.0's patch
    python scripts/duke_ablation.py --patch 8 8 4 --attention softmax
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from monai_ext.networks import ViT
from monai_ext.workflows import check_datalist, load_datalist

logger = logging.getLogger("duke_ablation")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "bundles" / "duke_breast_mri_classification" / "data" / "prepared"


def load_split(dataset_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 1, X, Y, Z)`` z-scored per volume (as NormalizeIntensityd) and labels ``(n,)``."""
    xs, ys = [], []
    for item in tqdm(load_datalist(dataset_dir, split), desc=f"loading {split}", unit="image"):
        v = nib.load(item["image"]).get_fdata().astype(np.float32)
        xs.append((v - v.mean()) / (v.std() + 1e-8))
        ys.append(int(item["label"]))
    return torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", type=Path, default=DEFAULT_DATA, help="prepared DUKE (monai-ext prepare duke)")
    p.add_argument("--patch", type=int, nargs=3, default=[8, 8, 4])
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--mlp", type=int, default=384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--pooling", default="max", choices=["cls", "mean", "max"])
    p.add_argument("--layer_scale", type=float, default=0.01, help="0 = off")
    p.add_argument("--attention", default="softmax_free")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    check_datalist(a.dataset_dir, splits=["training", "validation", "test"], task="classification", num_classes=2)
    data = {s: load_split(a.dataset_dir, s) for s in ("training", "validation", "test")}
    x_train, y_train = data["training"]
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    net = ViT(1, tuple(x_train.shape[2:]), a.patch, hidden_size=a.hidden, mlp_dim=a.mlp, num_layers=a.layers,
              num_heads=a.heads, spatial_dims=3, classification=True, num_classes=2, dropout_rate=0.1,
              attention=a.attention, pooling=a.pooling, layer_scale=a.layer_scale or None)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()

    def auroc(split: str) -> float:
        x, y = data[split]
        net.eval()
        with torch.no_grad():
            prob = torch.cat([net(x[i:i + 64]).softmax(1)[:, 1] for i in range(0, len(x), 64)])
        net.train()
        return float(roc_auc_score(y.numpy(), prob.numpy()))

    best = (-1.0, float("nan"), 0)  # validation AUROC, test AUROC at that epoch, epoch
    t0 = time.perf_counter()
    steps = (len(x_train) + a.batch_size - 1) // a.batch_size
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(len(x_train))
        total = 0.0
        for i in tqdm(range(steps), desc=f"epoch {epoch}/{a.epochs}", leave=False):
            idx = perm[i * a.batch_size:(i + 1) * a.batch_size]
            xb = x_train[idx].clone()
            for axis in (2, 4):  # left-right, cranio-caudal
                flip = torch.rand(xb.shape[0]) < 0.5
                xb[flip] = xb[flip].flip(axis)
            loss = loss_fn(net(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        val = auroc("validation")
        if val > best[0]:
            best = (val, auroc("test"), epoch)
        logger.info("epoch %d: loss %.3f, validation AUROC %.3f (%.0f s)", epoch, total / steps, val,
                    time.perf_counter() - t0)
    logger.info("best validation AUROC %.3f at epoch %d; test AUROC there %.3f; settings %s",
                best[0], best[2], best[1], vars(a))


if __name__ == "__main__":
    main()
