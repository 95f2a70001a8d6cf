"""Builders of benchmark tasks, run inside :mod:`monai_ext.bench.worker` processes.

Each builder takes JSON-able keyword arguments and returns an object with ``commands`` (name ->
zero-argument callable, what is timed) and ``info`` (facts such as the parameter count).

- :func:`vit_task`: a ViT, ours (``monai_ext.networks.ViT``, any registered attention, or
  :class:`PlainLinearAttention`, the cost floor of linear attention) or MONAI's own
  (``monai.networks.nets.ViT``, plain or with its SDPA path); commands ``infer`` (forward in
  ``inference_mode``) and ``train`` (forward, loss, backward, AdamW step).
- :func:`attention_core_task`: one attention layer alone on ``(1, N, C)`` tokens; commands ``module``
  (whole layer: qkv projection, normalization, core, output projection), ``core`` (everything after
  the qkv projection and before the output projection) and, for the linear attentions,
  ``matmul`` (the two products ``Q (K^T V)`` only).
- :func:`segmentation_task`: UNETR / APF-UNETR training step on a (pseudo-)image with a mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from monai_ext.networks.attention import MultiHeadAttentionBase

__all__ = ["ModelTask", "vit_task", "build_vit", "attention_core_task", "segmentation_task", "PlainLinearAttention",
           "FLOOR"]

#: the ``attention`` name of the floor in :func:`build_vit` / :func:`attention_core_task` (impl ``monai_ext``)
FLOOR = "linear_floor"


class PlainLinearAttention(MultiHeadAttentionBase):
    """Plain linear attention ``Q (K^T V) / N`` per head, no normalization, no mask: the cost floor of any
    attention that is linear in ``N`` (same projections as the registered types). A benchmark reference
    only, not registered (unnormalized, it is not meant for training)."""

    attention_name = FLOOR

    def attend(self, q, k, v, mask):
        return torch.matmul(q, torch.matmul(k.transpose(-2, -1), v) / q.shape[2])


class ModelTask:
    """``infer`` and ``train`` commands for ``model`` on a fixed input ``x``.

    Args:
        model: network; its output (or the first element of a tuple output) goes through ``loss_fn``.
        x: input batch.
        loss_fn: output -> scalar; default mean of squares (touches every output element).
        forward: ``(model, x) -> output``; default ``model(x)``.
        lr: AdamW learning rate.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, loss_fn: Callable[[Any], torch.Tensor] | None = None,
                 forward: Callable[[nn.Module, torch.Tensor], Any] | None = None, lr: float = 1e-4,
                 info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.x = x
        self.loss_fn = loss_fn or (lambda out: out.float().square().mean())
        self.forward = forward or (lambda m, inp: m(inp))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.commands = {"infer": self.infer, "train": self.train}
        self.info = {"params": sum(p.numel() for p in model.parameters()), **(info or {})}

    @staticmethod
    def _first(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.forward(self.model, self.x)

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self._first(self.forward(self.model, self.x)))
        loss.backward()
        self.optimizer.step()


def build_vit(impl: str, attention: str, in_channels: int, img_size: Sequence[int], patch_size: Sequence[int],
              hidden_size: int, mlp_dim: int, num_layers: int, num_heads: int) -> nn.Module:
    """A ViT backbone (no classification head) of either implementation.

    Args:
        impl: ``"monai_ext"`` (``attention`` = a registered name) or ``"monai"`` (``attention`` =
            ``"plain"``: MONAI's einsum/softmax path, or ``"sdpa"``: every ``SABlock`` switched to
            ``use_flash_attention=True``, i.e. ``torch.nn.functional.scaled_dot_product_attention``;
            MONAI's ``ViT`` does not take that argument itself, its ``TransformerBlock``/``SABlock`` do).
    """
    spatial_dims = len(img_size)
    common = dict(in_channels=in_channels, img_size=tuple(img_size), patch_size=tuple(patch_size),
                  hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads,
                  spatial_dims=spatial_dims, classification=False, dropout_rate=0.0, qkv_bias=False)
    if impl == "monai_ext" and attention == FLOOR:  # our ViT with every attention swapped for the floor
        from monai_ext.networks import ViT

        net = ViT(attention="softmax", **common)
        for blk in net.blocks:
            blk.attn = PlainLinearAttention(hidden_size, num_heads)
        return net
    if impl == "monai_ext":
        from monai_ext.networks import ViT

        return ViT(attention=attention, **common)
    if impl == "monai":
        from monai.networks.nets import ViT as MonaiViT

        if attention not in ("plain", "sdpa"):
            raise ValueError(f"MONAI ViT attention must be 'plain' or 'sdpa', got {attention!r}")
        net = MonaiViT(**common)
        if attention == "sdpa":
            for blk in net.blocks:
                if not hasattr(blk.attn, "use_flash_attention"):
                    raise RuntimeError("this MONAI version's SABlock has no use_flash_attention (needs MONAI >= 1.4)")
                blk.attn.use_flash_attention = True
        return net
    raise ValueError(f"impl must be 'monai_ext' or 'monai', got {impl!r}")


def vit_task(impl: str, attention: str, in_channels: int, img_size: Sequence[int], patch_size: Sequence[int],
             hidden_size: int, mlp_dim: int, num_layers: int, num_heads: int, batch_size: int = 1) -> ModelTask:
    """:class:`ModelTask` of :func:`build_vit` on a random ``(batch_size, in_channels, *img_size)`` input."""
    net = build_vit(impl, attention, in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads)
    x = torch.randn(batch_size, in_channels, *img_size)
    tokens = 1
    for i, p in zip(img_size, patch_size):
        tokens *= i // p
    return ModelTask(net, x, info={"tokens": tokens})


class AttentionCoreTask:
    """Forward timings of one attention layer alone (see the module docstring)."""

    def __init__(self, impl: str, attention: str, tokens: int, hidden_size: int, num_heads: int) -> None:
        self.x = torch.randn(1, tokens, hidden_size)
        self.commands: dict[str, Callable[[], Any]] = {}
        if impl == "monai_ext":
            from monai_ext.networks import build_attention

            if attention == FLOOR:
                self.attn = PlainLinearAttention(hidden_size, num_heads).eval()
            else:
                self.attn = build_attention(attention, hidden_size=hidden_size, num_heads=num_heads).eval()
            with torch.inference_mode():
                self.qkv = self.attn.qkv(self.x)
                q, k, v = self.qkv.chunk(3, dim=-1)
                self.q, self.k, self.v = q.clone(), k.clone(), v.clone()
                qn, kn, vn = self.attn.project(q, k, v, None)
                self.qh, self.kh, self.vh = (self.attn._split_heads(t).contiguous() for t in (qn, kn, vn))
            self.commands["core"] = self._core_fold if attention == "softmax_free" else self._core_ext
            if attention in ("softmax_free", "sima", FLOOR):
                self.commands["matmul"] = self._matmul
        elif impl == "monai":
            from monai.networks.blocks import SABlock

            self.attn = SABlock(hidden_size, num_heads, use_flash_attention=(attention == "sdpa")).eval()
            with torch.inference_mode():
                qkv = self.attn.input_rearrange(self.attn.qkv(self.x))
                self.qh, self.kh, self.vh = (t.contiguous() for t in (qkv[0], qkv[1], qkv[2]))
            self.commands["core"] = self._core_monai_sdpa if attention == "sdpa" else self._core_monai_plain
        else:
            raise ValueError(f"impl must be 'monai_ext' or 'monai', got {impl!r}")
        self.commands["module"] = self._module
        self.info = {"tokens": tokens}

    def _module(self) -> None:
        with torch.inference_mode():
            self.attn(self.x)

    def _core_ext(self) -> None:
        a = self.attn
        with torch.inference_mode():
            q, k, v = a.project(self.q, self.k, self.v, None)
            out = a.attend(a._split_heads(q), a._split_heads(k), a._split_heads(v), None)
            a._merge_heads(out)

    def _core_fold(self) -> None:
        """softmax_free: the fold from the qkv output to the layer output; the output projection is folded
        into it (``Q~ M W_o^T`` as one product), so it is part of this time."""
        a = self.attn
        with torch.inference_mode():
            a._fold(self.qkv, None)

    def _matmul(self) -> None:
        with torch.inference_mode():
            torch.matmul(self.qh, torch.matmul(self.kh.transpose(-2, -1), self.vh))

    def _core_monai_plain(self) -> None:
        a = self.attn
        with torch.inference_mode():
            att = torch.einsum("blxd,blyd->blxy", self.qh, self.kh) * a.scale
            att = att.softmax(dim=-1)
            a.out_rearrange(torch.einsum("bhxy,bhyd->bhxd", att, self.vh))

    def _core_monai_sdpa(self) -> None:
        a = self.attn
        with torch.inference_mode():
            out = torch.nn.functional.scaled_dot_product_attention(self.qh, self.kh, self.vh, scale=a.scale)
            a.out_rearrange(out)


def attention_core_task(impl: str, attention: str, tokens: int, hidden_size: int, num_heads: int
                        ) -> AttentionCoreTask:
    return AttentionCoreTask(impl, attention, tokens, hidden_size, num_heads)


def segmentation_task(network: dict[str, Any], in_channels: int, image_size: Sequence[int], num_classes: int = 1,
                      seed: int = 0) -> ModelTask:
    """Training step / inference of a 2D segmentation network on a random image and a random-blob mask.

    Args:
        network: keyword arguments of :class:`monai_ext.networks.UNETR` (``img_size`` and
            ``in_channels``/``out_channels`` are filled in).
        image_size: ``(H, W)`` of the (pseudo-)image the network sees.
    """
    from monai.losses import DiceCELoss

    from monai_ext.networks import UNETR

    g = torch.Generator().manual_seed(seed)
    net = UNETR(in_channels=in_channels, out_channels=num_classes, img_size=tuple(image_size), spatial_dims=2,
                **network)
    x = torch.randn(1, in_channels, *image_size, generator=g)
    y = (torch.nn.functional.avg_pool2d(torch.randn(1, 1, *image_size, generator=g), 9, 1, 4) > 0).float()
    loss = DiceCELoss(sigmoid=True, lambda_dice=0.5, lambda_ce=0.5)
    return ModelTask(net, x, loss_fn=lambda out: loss(out, y),
                     info={"tokens": net.grid_size[0] * net.grid_size[1]})


def profile_commands(task: ModelTask, command: str = "train", top: int = 10) -> list[dict[str, Any]]:
    """Run ``task.commands[command]`` once under ``torch.profiler`` (CPU); the ``top`` ops by self CPU time.

    Returns rows ``{"op", "calls", "self_cpu_s", "self_cpu_pct"}``; the percentages are of the total
    self CPU time of the profiled call.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        task.commands[command]()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "calls": int(e.count), "self_cpu_s": e.self_cpu_time_total / 1e6,
             "self_cpu_pct": 100.0 * e.self_cpu_time_total / total} for e in rows]


class ProfiledTask:
    """Wraps a task: its own commands plus ``profile_<cmd>`` returning :func:`profile_commands` rows."""

    def __init__(self, task: ModelTask, top: int = 10) -> None:
        self.commands = dict(task.commands)
        for name in list(task.commands):
            self.commands[f"profile_{name}"] = lambda name=name: profile_commands(task, name, top)
        self.info = task.info


def vit_profile_task(top: int = 10, **kwargs: Any) -> ProfiledTask:
    """:func:`vit_task` with ``profile_infer``/``profile_train`` commands."""
    return ProfiledTask(vit_task(**kwargs), top)
