"""``monai-ext demo``: a short CPU training of the 2D ViT on a synthetic task.

The task: a noisy image holds one bright disc at a random position; the label says whether the disc
radius is above the middle of the radius range. A model must find the disc wherever it is and measure
it, so a constant or position-blind guess stays at chance (50 %).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .networks import ViT

logger = logging.getLogger(__name__)


def make_disc_task(n: int, size: int = 32, seed: int = 0, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, size, size)`` and labels ``(n,)`` of the disc-radius task."""
    rng = np.random.default_rng(seed)
    r_lo, r_hi = size * 0.08, size * 0.28
    radius = rng.uniform(r_lo, r_hi, n)
    labels = (radius > (r_lo + r_hi) / 2).astype(np.int64)
    cy = rng.uniform(r_hi, size - r_hi, n)
    cx = rng.uniform(r_hi, size - r_hi, n)
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    img = (d2 <= radius[:, None, None] ** 2).astype(np.float32)
    img += noise * rng.standard_normal(img.shape).astype(np.float32)
    return torch.from_numpy(img[:, None]), torch.from_numpy(labels)


def train_demo(attention: str = "softmax_free", steps: int = 150, batch_size: int = 32, size: int = 32,
               seed: int = 0, lr: float = 2e-3, progress: bool = True) -> dict:
    """Train a tiny 2D ViT on :func:`make_disc_task`; return held-out accuracy and timing."""
    torch.manual_seed(seed)
    x_train, y_train = make_disc_task(steps * batch_size // 2, size, seed)
    x_test, y_test = make_disc_task(512, size, seed + 1)
    model = ViT(in_channels=1, img_size=(size, size), patch_size=8, hidden_size=64, mlp_dim=128, num_layers=2,
                num_heads=4, spatial_dims=2, classification=True, num_classes=2, attention=attention)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc=f"demo ViT ({attention})", disable=not progress):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"attention": attention, "steps": steps, "batch_size": batch_size, "final_loss": loss.item(),
            "test_accuracy": acc, "chance": 0.5, "train_seconds": train_s}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="short CPU training of the 2D ViT on a synthetic task")
    p.add_argument("--attention", default="softmax_free")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    result = train_demo(args.attention, steps=args.steps, seed=args.seed)
    logger.info("demo result: %s", json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
