"""Workloads of the APF benchmark (:mod:`monai_ext.bench.apf`): its settings, the PAIP-like images, the
networks, and the timing / Dice / patching tasks that :func:`monai_ext.bench.runner.measure_interleaved` runs in
worker processes (referenced there as ``monai_ext.bench.apf_tasks:<name>``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
MIB = 1024**2


@dataclass
class APFBenchSettings:
    """Sizes, network and budget of the APF benchmark (defaults: ``monai-ext bench apf``)."""

    sizes: Sequence[int] = (512, 1024, 2048)
    dice_sizes: Sequence[int] = (512, 1024)
    patches: Sequence[int] = (2, 4, 8)
    tokens: int = 1024
    attention: str = "softmax_free"
    hidden: int = 128
    heads: int = 4
    layers: int = 4
    mlp: int = 256
    feature_size: int = 8
    steps: int = 80
    lr: float = 1e-3
    train_images: int = 6
    val_images: int = 3
    train_budget: float = 240.0
    patching_sizes: Sequence[int] = (1024, 8192)
    repeats: int = 3
    step_timeout: float = 240.0
    config_budget: float = 60.0
    memory_fraction: float = 0.7
    conv_efficiency: float = 0.25
    threads: int | None = None
    seed: int = 0

    @property
    def side(self) -> int:
        return math.isqrt(self.tokens)

    def net_kwargs(self) -> dict[str, Any]:
        return dict(feature_size=self.feature_size, hidden_size=self.hidden, mlp_dim=self.mlp,
                    num_heads=self.heads, num_layers=self.layers, attention=self.attention)

    def shape_text(self) -> str:
        return (f"transformer: {self.layers} layers, hidden {self.hidden}, {self.heads} heads, MLP {self.mlp}, "
                f"attention `{self.attention}`; decoder feature size {self.feature_size}; 3 input channels "
                f"(RGB scaled to [0, 1]), 1 output channel (viable tumour), batch 1, fp32")


def blur_kernel_for(size: int) -> int:
    """Gaussian kernel of the APF edge map by image size (DESIGN: 3 at 512, 7 at 4096 and above)."""
    return 3 if size <= 1024 else 5 if size < 4096 else 7


# ----------------------------------------------------------------------------- data
def paip_like_images(size: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` synthetic PAIP-like slides at ``size`` px: ``images (K, 3, size, size)`` uint8 and
    viable-tumour ``masks (K, 1, size, size)`` uint8, padded with white / background to a square.

    Uses :func:`monai_ext.data.synthetic.paip.synth_slide` (slide ``i`` from seed ``seed + i``).
    """
    from monai_ext.data.synthetic.paip import synth_slide

    images = np.full((count, 3, size, size), 255, dtype=np.uint8)
    masks = np.zeros((count, 1, size, size), dtype=np.uint8)
    for i in range(count):
        rgb, _whole, viable = synth_slide(np.random.default_rng(seed + i), size=size)
        h, w = viable.shape
        images[i, :, :h, :w] = rgb.transpose(2, 0, 1)
        masks[i, 0, :h, :w] = viable
    return images, masks


def upscaled_image(size: int, seed: int = 0, base: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """One ``size`` px image for timing only: a ``base`` px synthetic slide up-scaled (bilinear) with
    pixel noise added (generating a slide natively at 8192 px takes minutes and ~10 GiB; patching
    cost depends on the pixel count and the token count, not on how fine the tissue texture is)."""
    import cv2

    if size <= base:
        imgs, masks = paip_like_images(size, 1, seed)
        return imgs[0], masks[0]
    imgs, masks = paip_like_images(base, 1, seed)
    rgb = cv2.resize(np.ascontiguousarray(imgs[0].transpose(1, 2, 0)), (size, size), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(seed).normal(0, 3, rgb.shape)
    rgb = np.clip(rgb.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    mask = cv2.resize(masks[0, 0], (size, size), interpolation=cv2.INTER_NEAREST)
    return rgb.transpose(2, 0, 1).copy(), mask[None]


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Binary Dice ``2 |A n B| / (|A| + |B|)``; 1 when both are empty."""
    p = np.asarray(pred).astype(bool)
    g = np.asarray(gt).astype(bool)
    denom = p.sum() + g.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, g).sum() / denom)


# ----------------------------------------------------------------------------- models (in workers)
def _build(kind: str, size: int, patch: int, tokens: int, net: dict[str, Any]):
    """``(model, input side)``: ``kind`` ``"apf"`` (APF-UNETR on the ``sqrt(L) p`` pseudo-image) or
    ``"uniform"`` (UNETR with patch ``patch`` on the ``size`` px image)."""
    from monai_ext.networks import UNETR
    from monai_ext.networks.apf_unetr import APFUNETR

    if kind == "apf":
        model = APFUNETR(in_channels=3, out_channels=1, num_tokens=tokens, patch_size=patch, **net)
        return model, math.isqrt(tokens) * patch
    if kind == "uniform":
        model = UNETR(in_channels=3, out_channels=1, img_size=(size, size), patch_size=patch, spatial_dims=2, **net)
        return model, size
    raise ValueError(f"kind must be 'apf' or 'uniform', got {kind!r}")


def _loss():
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, lambda_dice=0.5, lambda_ce=0.5)


def apf_step_task(kind: str, size: int, patch: int, tokens: int, net: dict[str, Any], seed: int = 0):
    """Timing task: ``infer``/``train`` on one random input of the right shape with a blob target."""
    import torch

    from .tasks import ModelTask

    model, side = _build(kind, size, patch, tokens, net)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, side, side, generator=g)
    y = (torch.nn.functional.avg_pool2d(torch.randn(1, 1, side, side, generator=g), 9, 1, 4) > 0).float()
    loss = _loss()
    if kind == "apf":
        mask = torch.ones(1, tokens, dtype=torch.bool)
        fwd = lambda m, inp: m(inp, mask)  # noqa: E731
        n = tokens
    else:
        fwd = None
        n = (size // patch) ** 2
    return ModelTask(model, x, loss_fn=lambda out: loss(out, y), forward=fwd, lr=1e-3, info={"tokens": n})


class _TrainRun:
    """Dice task: patch the data (APF), train ``steps`` steps, evaluate at full resolution."""

    def __init__(self, kind: str, size: int, patch: int, tokens: int, net: dict[str, Any], data: str, steps: int,
                 lr: float, seed: int = 0) -> None:
        self.args = (kind, size, patch, tokens, net, data, steps, lr, seed)
        self.commands = {"run": self.run}
        self.info = {"tokens": tokens if kind == "apf" else (size // patch) ** 2}

    def run(self) -> dict[str, Any]:
        import torch

        from monai_ext.transforms import AdaptivePatchd, quadtree_unpatch

        kind, size, patch, tokens, net, data, steps, lr, seed = self.args
        arrays = np.load(data)
        images = arrays["images"].astype(np.float32) / 255.0
        masks = arrays["masks"]
        n_train = int(arrays["n_train"])
        torch.manual_seed(seed)
        model, side = _build(kind, size, patch, tokens, net)
        patcher = None
        metas: list[dict[str, Any] | None] = []
        xs, ys, ms = [], [], []
        t0 = time.perf_counter()
        leaves = []
        for img, msk in zip(images, masks):
            if kind == "apf":
                patcher = patcher or AdaptivePatchd(keys=("image", "label"), patch_size=patch, num_tokens=tokens,
                                                    mode="fixed", min_size=patch, blur_kernel=blur_kernel_for(size),
                                                    interpolation=("area", "nearest"))
                d = patcher({"image": img, "label": msk})
                meta = d["image_apf"]
                xs.append(torch.as_tensor(np.asarray(d["image"]))[None])
                ys.append(torch.as_tensor(np.asarray(d["label"]), dtype=torch.float32)[None])
                ms.append(torch.as_tensor(meta["mask"])[None])
                metas.append(meta)
                leaves.append(int(meta["num_leaves"]))
            else:
                xs.append(torch.as_tensor(img)[None])
                ys.append(torch.as_tensor(msk, dtype=torch.float32)[None])
                ms.append(None)
                metas.append(None)
        patch_s = (time.perf_counter() - t0) / len(images)
        loss_fn = _loss()
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        rng = np.random.default_rng(seed)
        step_times = []
        model.train()
        for _ in range(steps):
            i = int(rng.integers(0, n_train))
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out = model(xs[i], ms[i]) if kind == "apf" else model(xs[i])
            loss = loss_fn(out, ys[i])
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - t)
        model.eval()
        dices, uppers = [], []
        with torch.inference_mode():
            for i in range(n_train, len(images)):
                out = model(xs[i], ms[i]) if kind == "apf" else model(xs[i])
                logits = out[0]
                if kind == "apf":
                    logits = quadtree_unpatch(logits, metas[i], mode="bilinear")
                    gt_back = quadtree_unpatch(ys[i][0], metas[i], mode="nearest")
                    uppers.append(dice_score(gt_back.numpy() > 0.5, masks[i]))
                dices.append(dice_score(logits.numpy() > 0, masks[i]))
        return {
            "dice": float(np.mean(dices)), "dice_upper": float(np.mean(uppers)) if uppers else math.nan,
            "train_s": float(sum(step_times)), "step_s_median": float(np.median(step_times)),
            "patch_s_per_image": patch_s if kind == "apf" else 0.0,
            "real_leaves_mean": float(np.mean(leaves)) if leaves else math.nan,
            "final_loss": float(loss.detach()),
        }


def apf_train_task(**kwargs: Any) -> _TrainRun:
    return _TrainRun(**kwargs)


class _PatchingTask:
    """Patching-time task: ``plan`` (edge map + quadtree) and ``patch`` (plan + resize of image and mask)."""

    def __init__(self, size: int, tokens: int, patch: int, seed: int = 0) -> None:
        from monai_ext.transforms import AdaptivePatchd, plan_quadtree

        self.image, self.mask = upscaled_image(size, seed)
        self.kw = dict(patch_size=patch, num_tokens=tokens, mode="fixed", min_size=patch,
                       blur_kernel=blur_kernel_for(size))
        self.plan_quadtree = plan_quadtree
        self.patcher = AdaptivePatchd(keys=("image", "label"), interpolation=("area", "nearest"), **self.kw)
        self.commands = {"plan": self.plan, "patch": self.patch}
        self.info = {"size": size}

    def plan(self) -> int:
        return int(self.plan_quadtree(self.image, **self.kw)["num_leaves"])

    def patch(self) -> int:
        return int(self.patcher({"image": self.image, "label": self.mask})["image_apf"]["num_leaves"])


def patching_task(**kwargs: Any) -> _PatchingTask:
    return _PatchingTask(**kwargs)
