"""``monai-ext demo``: the whole workflow of a bundle on the embedded default (synthetic data in the
real on-disk layout): synth -> prepare -> train -> evaluate, through ``python -m monai.bundle run``.

``monai-ext demo --toy`` instead trains the 2D ViT for a few seconds on an in-memory task: a noisy
image holds one bright disc at a random position; the label says whether the disc radius is above the
middle of the radius range (chance: 50 %).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
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


#: bundle -> (dataset name, synthetic cases, prepare options, train overrides) of the demo
DEMO_BUNDLES: dict[str, tuple[str, int, dict, dict]] = {
    # CPU-sized: 64 px at patch 8 (64 tokens); the bundle's own default is 224 px at patch 16
    "vindr_cxr_cardiomegaly_classification": ("vindr_cxr", 1200, {"resolutions": [64]},
                                              {"image_size": 64, "patch_size": 8, "epochs": 30, "num_workers": 0}),
    "duke_breast_mri_classification": ("duke", 922, {"workers": 2}, {}),  # the real DUKE size
    "apf_unetr_btcv_segmentation": ("btcv", 24, {}, {}),
    "apf_unetr_paip_segmentation": ("paip", 12, {}, {}),
}


def bundles_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "bundles"


def run_bundle_demo(bundle: str, epochs: int | None = None, seed: int = 0) -> dict:
    """synth -> prepare -> train -> evaluate one bundle into ``bundles/<bundle>/{data,models,eval}``."""
    import importlib

    if bundle not in DEMO_BUNDLES:
        raise ValueError(f"unknown bundle {bundle!r}; available: {sorted(DEMO_BUNDLES)}")
    dataset, cases, prep_opts, overrides = DEMO_BUNDLES[bundle]
    root = bundles_dir() / bundle
    if not (root / "configs" / "train.yaml").is_file():
        raise FileNotFoundError(f"{root / 'configs' / 'train.yaml'} not found: run from a monai_ext checkout")
    module = importlib.import_module(f"monai_ext.data.{dataset}")
    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    t0 = time.perf_counter()
    marker, stamp = raw / ".synth_complete", f"{cases} cases, seed {seed}\n"
    if not marker.exists() or marker.read_text() != stamp:  # absent, interrupted, or another size / seed
        logger.info("[1/4] synthesizing %d %s cases into %s", cases, dataset, raw)
        for stale in (raw, prepared):  # prepared files of other synthetic data must not be reused
            if stale.exists():
                shutil.rmtree(stale)
        module.synthesize(raw, cases=cases, seed=seed)
        marker.write_text(stamp)
    else:
        logger.info("[1/4] synthetic data already in %s", raw)
    logger.info("[2/4] preparing into %s", prepared)
    module.prepare(raw, prepared, **prep_opts)
    cfg = root / "configs"
    common = ["--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf")]
    overrides = {**overrides, **({"epochs": epochs} if epochs is not None else {})}
    for k, v in overrides.items():
        common += [f"--{k}", json.dumps(v)]
    # small networks on few cores: one intra-op thread avoids oversubscription (set OMP_NUM_THREADS to change)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    logger.info("[3/4] training: python -m monai.bundle run training --config_file configs/train.yaml %s",
                " ".join(common[4:]))
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                    str(cfg / "train.yaml"), *common], cwd=root, check=True, env=env)
    logger.info("[4/4] evaluating the best checkpoint on the test split")
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    str([str(cfg / "train.yaml"), str(cfg / "evaluate.yaml")]), *common], cwd=root, check=True,
                   env=env)
    metrics = {}
    for line in (root / "eval" / "metrics.csv").read_text().splitlines():
        if "," in line:
            k, v = line.split(",", 1)
            metrics[k] = float(v) if v.replace(".", "", 1).replace("-", "", 1).isdigit() else v
    result = {"bundle": bundle, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 1),
              "eval_dir": str(root / "eval")}
    logger.info("demo result: %s", json.dumps(result))
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth -> prepare -> train -> evaluate a bundle on synthetic data")
    p.add_argument("--bundle", default="vindr_cxr_cardiomegaly_classification", choices=sorted(DEMO_BUNDLES))
    p.add_argument("--epochs", type=int, default=None, help="override the bundle's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="seconds-long in-memory ViT training instead")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.toy:
        result = train_demo("softmax_free", seed=args.seed)
        logger.info("toy result: %s", json.dumps(result))
    else:
        result = run_bundle_demo(args.bundle, epochs=args.epochs, seed=args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
