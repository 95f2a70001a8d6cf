"""Attention scaling benchmark (the softmax-free paper's Figure 2 at CPU scale).

One 2D ViT shape for every model; image sizes from 224 px to 2048 px (196 to 16384 tokens at patch
16), batch 1. Models: our ViT (:class:`monai_ext.networks.ViT`) with ``softmax_free``, ``sima`` and
``softmax`` (SDPA) attention, the same ViT with plain linear attention ``Q (K^T V) / N`` and no
normalization (:class:`monai_ext.bench.tasks.PlainLinearAttention`: the cost floor of any linear
attention; ratios to it are reported), and MONAI's own :class:`monai.networks.nets.ViT`, plain (einsum and
softmax, materializes the ``N x N`` attention) and with every ``SABlock`` on its
``use_flash_attention`` (SDPA) path. Measured per model and size, in fresh worker processes,
interleaved, median of repeats: training-step time (forward, loss, backward, AdamW step), inference
time (forward in ``inference_mode``), and peak memory of each (see :mod:`monai_ext.bench.worker`).

A second pass times one attention layer alone (``module``: qkv projection to output projection;
``core``: what lies between the projections -- for ``softmax_free`` the fold, which absorbs the output
projection, so its ``core`` includes it; ``matmul``: the two products ``Q (K^T V)``) and turns the
times into achieved GFLOP/s against the machine's measured GEMM GFLOP/s. FLOPs counted (forward,
multiply-add = 2): linear attentions ``4 N d^2 h`` (``K^T V`` then ``Q (K^T V)``), softmax attention
``4 N^2 d h`` (``Q K^T`` then ``P V``), projections ``8 N C^2`` (the same counts for every attention,
whatever an implementation actually executes).

Configurations predicted not to fit in memory (MONAI's plain path stores ``h N^2`` fp32 scores per
layer for backward: ``(layers + 2) h N^2 4`` bytes for training, ``2 h N^2 4`` for inference,
checked against ``MemAvailable``; other models by extrapolating their measured growth) or in the
per-step time limit (extrapolated from the smaller sizes) are recorded as skipped with the reason;
a configuration that runs out of time or memory anyway is recorded as timed out / failed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .machine import GIB, available_memory_bytes
from .runner import Config, Measurement, measure_interleaved

FLOOR = "linear_floor"  # == monai_ext.bench.tasks.FLOOR (not imported here: tasks imports the networks)

__all__ = ["Variant", "VARIANTS", "AttentionBenchSettings", "attention_core_flops", "plain_attention_bytes",
           "extrapolate", "scaling_pass", "core_pass", "profile_pass", "shape_name"]

logger = logging.getLogger(__name__)
MIB = 1024**2


@dataclass(frozen=True)
class Variant:
    """A model in the comparison."""

    key: str
    label: str
    impl: str  # monai_ext | monai
    attention: str  # registry name, or plain/sdpa for MONAI
    quadratic_memory: bool  # stores N x N scores
    quadratic_time: bool


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("softmax_free", "ours: softmax_free", "monai_ext", "softmax_free", False, False),
        Variant("floor", "plain linear attention (floor)", "monai_ext", FLOOR, False, False),
        Variant("sima", "ours: sima", "monai_ext", "sima", False, False),
        Variant("softmax", "ours: softmax (SDPA)", "monai_ext", "softmax", False, True),
        Variant("monai_plain", "MONAI ViT (plain)", "monai", "plain", True, True),
        Variant("monai_sdpa", "MONAI ViT (use_flash_attention)", "monai", "sdpa", False, True),
    )
}
REFERENCES = ("monai_plain", "monai_sdpa")


@dataclass
class AttentionBenchSettings:
    """Shape and budget of the attention benchmark (defaults: ``monai-ext bench attention``)."""

    sizes: Sequence[int] = (224, 512, 1024, 1440, 2048)
    patch: int = 16
    hidden: int = 256
    heads: int = 8
    layers: int = 2
    mlp: int = 1024
    in_channels: int = 3
    models: Sequence[str] = tuple(VARIANTS)
    repeats: int = 3
    step_timeout: float = 240.0
    config_budget: float = 60.0
    core_budget: float = 20.0
    memory_fraction: float = 0.7
    core: bool = True
    profile: bool = True
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    #: 3D volumes instead of square 2D images (``sizes`` is then ignored); ``patch3d`` their patch size
    volumes: Sequence[Sequence[int]] = ()
    patch3d: Sequence[int] = (16, 16, 4)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Input spatial shapes, increasing token count."""
        if self.volumes:
            return sorted((tuple(int(v) for v in vol) for vol in self.volumes), key=self.tokens)
        return [(int(px), int(px)) for px in sorted(self.sizes)]

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.patch3d) if self.volumes else (self.patch, self.patch)

    def tokens(self, shape: Sequence[int]) -> int:
        n = 1
        for i, p in zip(shape, self.patch3d if self.volumes else (self.patch, self.patch)):
            n *= int(i) // int(p)
        return n

    def shape_text(self) -> str:
        dims = "3D" if self.volumes else "2D"
        return (f"{dims} ViT, {self.in_channels} input channel(s), patch {'x'.join(map(str, self.patch_size))}, "
                f"hidden {self.hidden}, {self.heads} heads (d = {self.hidden // self.heads}), {self.layers} layers, "
                f"MLP {self.mlp}, no class token, batch 1, fp32")


def attention_core_flops(attention: str, tokens: int, hidden: int, heads: int) -> float:
    """Forward FLOPs of the attention core (between the projections) of one layer."""
    d = hidden // heads
    if attention in ("softmax_free", "sima", FLOOR):
        return 4.0 * tokens * d * d * heads
    return 4.0 * tokens * tokens * d * heads


def projection_flops(tokens: int, hidden: int) -> float:
    """Forward FLOPs of the qkv and output projections of one layer: ``8 N C^2``."""
    return 8.0 * tokens * hidden * hidden


def linear_train_flops(s: AttentionBenchSettings, tokens: int) -> float:
    """FLOPs of one training step outside the attention cores (patch embedding, projections, MLP):
    forward ``N (2 P C + L (8 C^2 + 4 C M))`` times 3 (backward = 2 x forward), ``P`` = values per patch."""
    patch_values = s.in_channels * math.prod(s.patch_size)
    fwd = tokens * (2.0 * patch_values * s.hidden
                    + s.layers * (8.0 * s.hidden**2 + 4.0 * s.hidden * s.mlp))
    return 3.0 * fwd


def plain_attention_bytes(tokens: int, heads: int, layers: int, train: bool) -> float:
    """Bytes of fp32 ``N x N`` score matrices MONAI's plain path holds at its peak (measured to within a
    few percent on this code: one per layer kept for backward plus two transients)."""
    per = 4.0 * heads * tokens * tokens
    return per * (layers + 2) if train else per * 2


def extrapolate(history: Sequence[tuple[int, float]], n: int, default_exponent: float,
                bounds: tuple[float, float] = (1.0, 2.0)) -> float:
    """Power-law extrapolation of ``value(n)`` from ``[(n_i, value_i), ...]`` (increasing ``n_i``): the
    exponent comes from the last two points (clamped to ``bounds``) or is ``default_exponent``."""
    pts = [(a, b) for a, b in history if b is not None and not math.isnan(b) and b > 0]
    if not pts:
        return math.nan
    n1, v1 = pts[-1]
    k = default_exponent
    if len(pts) >= 2:
        n0, v0 = pts[-2]
        if n1 > n0:
            k = min(max(math.log(v1 / v0) / math.log(n1 / n0), bounds[0]), bounds[1])
    return v1 * (n / n1) ** k


def _vit_kwargs(s: AttentionBenchSettings, v: Variant, shape: Sequence[int]) -> dict[str, Any]:
    return dict(impl=v.impl, attention=v.attention, in_channels=s.in_channels, img_size=list(shape),
                patch_size=list(s.patch_size), hidden_size=s.hidden, mlp_dim=s.mlp, num_layers=s.layers,
                num_heads=s.heads)


def shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


def _check_settings(s: AttentionBenchSettings) -> None:
    unknown = [m for m in s.models if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(VARIANTS)}")
    bad = [shape_name(sh) for sh in s.shapes
           if len(sh) != len(s.patch_size) or any(i % p or i < p for i, p in zip(sh, s.patch_size))]
    if bad:
        raise ValueError(f"input size(s) {bad} are not positive multiples of the patch size "
                         f"{shape_name(s.patch_size)}")
    if s.hidden % s.heads:
        raise ValueError(f"hidden size {s.hidden} is not divisible by {s.heads} heads")


def scaling_pass(s: AttentionBenchSettings) -> list[dict[str, Any]]:
    """Training/inference time and peak memory of every model at every input shape (see module doc)."""
    rows: list[dict[str, Any]] = []
    history: dict[str, list[dict[str, Any]]] = {m: [] for m in s.models}
    dead: dict[str, str] = {}
    for shape in s.shapes:
        tokens = s.tokens(shape)
        px = shape_name(shape)
        avail = available_memory_bytes()
        limit = s.memory_fraction * avail
        configs: list[Config] = []
        predictions: dict[str, dict[str, float]] = {}
        for key in s.models:
            v = VARIANTS[key]
            h = history[key]
            pred = {}
            for cmd in ("train", "infer"):
                mem = extrapolate([(r["tokens"], r[f"{cmd}_peak_mib"] * MIB) for r in h], tokens,
                                  2.0 if v.quadratic_memory else 1.0)
                if v.quadratic_memory:
                    formula = plain_attention_bytes(tokens, s.heads, s.layers, cmd == "train")
                    mem = formula if math.isnan(mem) else max(mem, formula)
                pred[f"{cmd}_mem"] = mem
                pred[f"{cmd}_time"] = extrapolate([(r["tokens"], r[f"{cmd}_s"]) for r in h], tokens,
                                                  2.0 if v.quadratic_time else 1.0)
            predictions[key] = pred
            skip = None
            commands: list[str] | None = None
            if key in dead:
                skip = dead[key]
            else:
                fits = [cmd for cmd in ("infer", "train") if not pred[f"{cmd}_mem"] > limit]
                if not fits:
                    skip = (f"skipped: would need ~{pred['infer_mem'] / GIB:.1f} GiB (inference) / "
                            f"{pred['train_mem'] / GIB:.1f} GiB (training), {avail / GIB:.1f} GiB available "
                            f"(limit {s.memory_fraction:.0%})")
                elif len(fits) < 2:
                    commands = fits
                if not skip and pred["train_time"] > s.step_timeout and "train" in (commands or ["train"]):
                    if pred["infer_time"] > s.step_timeout:
                        skip = (f"skipped: predicted ~{pred['train_time']:.0f} s per training step, over the "
                                f"{s.step_timeout:.0f} s limit")
                    else:
                        commands = ["infer"]
            configs.append(Config(key=f"{key}@{px}", builder="monai_ext.bench.tasks:vit_task",
                                  kwargs=_vit_kwargs(s, v, shape), skip=skip, commands=commands,
                                  meta={"model": key, "image": px, "tokens": tokens}))
        logger.info("attention bench: %s (%d tokens), %d model(s) to run", px, tokens,
                    sum(1 for c in configs if not c.skip))
        results = measure_interleaved(configs, ("infer", "train"), repeats=s.repeats, timeout=s.step_timeout,
                                      config_budget=s.config_budget, threads=s.threads)
        for m in results:
            key = m.config.meta["model"]
            v = VARIANTS[key]
            pred = predictions[key]
            row = _row(m, v, px, tokens, pred, s)
            if m.config.commands is not None and "train" not in m.config.commands and m.status == "ok":
                row["note"] = (f"training skipped: would need ~{pred['train_mem'] / GIB:.1f} GiB"
                               if pred["train_mem"] > limit
                               else f"training skipped: predicted ~{pred['train_time']:.0f} s per step")
            rows.append(row)
            if m.status == "ok" and m.config.commands is None:
                history[key].append(row)
            elif m.status in ("timed out", "failed"):
                dead[key] = f"skipped: {m.status} at {tokens} tokens"
    _add_ratios(rows)
    return rows


def _row(m: Measurement, v: Variant, px: str, tokens: int, pred: dict[str, float],
         s: AttentionBenchSettings) -> dict[str, Any]:
    status = m.status
    note = m.note or ""
    if status == "timed out":
        note = f"timed out ({note})"
    elif status == "failed":
        note = f"failed: {note}"
    return {
        "model": v.key, "label": v.label, "impl": v.impl, "attention": v.attention, "image": px, "tokens": tokens,
        "status": status, "note": note,
        "train_s": m.median("train"), "train_repeats": m.repeats("train"),
        "infer_s": m.median("infer"), "infer_repeats": m.repeats("infer"),
        "train_peak_mib": m.peak("train") / MIB, "infer_peak_mib": m.peak("infer") / MIB,
        "predicted_train_peak_mib": pred["train_mem"] / MIB, "predicted_train_s": pred["train_time"],
        "params": m.info.get("params"), "peak_method": m.peak_method,
        "linear_train_gflop": linear_train_flops(s, tokens) / 1e9,
    }


def _ratio(a: Any, b: Any) -> float:
    ok = all(isinstance(v, (int, float)) and not math.isnan(v) and v > 0 for v in (a, b))
    return a / b if ok else math.nan


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by = {(r["model"], r["tokens"]): r for r in rows}
    for r in rows:
        floor, sdpa = by.get(("floor", r["tokens"]), {}), by.get(("monai_sdpa", r["tokens"]), {})
        r["train_vs_floor"] = _ratio(r["train_s"], floor.get("train_s"))
        r["infer_vs_floor"] = _ratio(r["infer_s"], floor.get("infer_s"))
        r["train_mem_vs_monai_sdpa"] = _ratio(r["train_peak_mib"], sdpa.get("train_peak_mib"))
        for ref in REFERENCES:
            b = by.get((ref, r["tokens"]))
            for q in ("train_s", "infer_s"):
                val = b[q] / r[q] if b and r[q] and not math.isnan(r[q]) else math.nan
                r[f"{q.split('_')[0]}_speedup_vs_{ref}"] = val
            for q in ("train_peak_mib", "infer_peak_mib"):
                val = b[q] / r[q] if b and r[q] and r[q] > 0 and not math.isnan(r[q]) else math.nan
                r[f"{q.split('_')[0]}_mem_ratio_vs_{ref}"] = val


CORE_VARIANTS = ("softmax_free", "floor", "sima", "softmax", "monai_plain")


def core_pass(s: AttentionBenchSettings, gemm_gflops: float) -> list[dict[str, Any]]:
    """Forward time and achieved GFLOP/s of one attention layer alone, per attention and token count."""
    rows: list[dict[str, Any]] = []
    dead: dict[str, str] = {}
    last_time: dict[str, tuple[int, float]] = {}
    for shape in s.shapes:
        tokens = s.tokens(shape)
        px = shape_name(shape)
        limit = s.memory_fraction * available_memory_bytes()
        configs = []
        for key in CORE_VARIANTS:
            if key not in s.models:
                continue
            v = VARIANTS[key]
            skip = dead.get(key)
            if not skip and v.quadratic_memory and plain_attention_bytes(tokens, s.heads, 1, False) > limit:
                skip = (f"skipped: would need ~{plain_attention_bytes(tokens, s.heads, 1, False) / GIB:.1f} GiB")
            if not skip and key in last_time:
                n0, t0 = last_time[key]
                t = t0 * (tokens / n0) ** (2 if v.quadratic_time else 1)
                if t > s.step_timeout:
                    skip = f"skipped: predicted ~{t:.0f} s per call"
            configs.append(Config(key=f"core:{key}@{px}", builder="monai_ext.bench.tasks:attention_core_task",
                                  kwargs=dict(impl=v.impl, attention=v.attention, tokens=tokens,
                                              hidden_size=s.hidden, num_heads=s.heads),
                                  skip=skip, meta={"model": key}))
        results = measure_interleaved(configs, ("module", "core", "matmul"), repeats=s.repeats,
                                      timeout=s.step_timeout, config_budget=s.core_budget, threads=s.threads)
        for m in results:
            key = m.config.meta["model"]
            v = VARIANTS[key]
            core_f = attention_core_flops(v.attention if v.impl == "monai_ext" else "softmax", tokens, s.hidden,
                                          s.heads)
            mod_f = core_f + projection_flops(tokens, s.hidden)
            mm_f = core_f
            note = m.note
            if key == "softmax_free":  # the fold absorbs the output projection: its core includes it
                core_f += 2.0 * tokens * s.hidden * s.hidden
                note = note or "core includes the output projection (folded into it)"
            row = {"model": key, "label": v.label, "tokens": tokens, "status": m.status, "note": note,
                   "module_s": m.median("module"), "core_s": m.median("core"), "matmul_s": m.median("matmul"),
                   "core_gflop": core_f / 1e9, "module_gflop": mod_f / 1e9}
            for part, fl in (("core", core_f), ("module", mod_f), ("matmul", mm_f)):
                t = row[f"{part}_s"]
                row[f"{part}_gflops"] = fl / t / 1e9 if t and not math.isnan(t) else math.nan
                row[f"{part}_pct_gemm"] = 100.0 * row[f"{part}_gflops"] / gemm_gflops if gemm_gflops else math.nan
            rows.append(row)
            if m.status != "ok":
                dead.setdefault(key, m.note if m.status == "skipped" else f"skipped: {m.status} at {tokens} tokens")
            else:
                last_time[key] = (tokens, max(row["module_s"], row["core_s"]))
    return rows


def profile_pass(s: AttentionBenchSettings, shape: Sequence[int], model: str = "softmax_free"
                 ) -> list[dict[str, Any]]:
    """Top ops of one training step of ``model`` at ``shape`` (``torch.profiler``), after a warm-up step."""
    v = VARIANTS[model]
    cfg = Config(key=f"profile:{model}@{shape_name(shape)}", builder="monai_ext.bench.tasks:vit_profile_task",
                 kwargs=dict(top=10, **_vit_kwargs(s, v, shape)))
    # warm-up train step, then the profiled one
    (m,) = measure_interleaved([cfg], ("train", "profile_train"), repeats=0, timeout=s.step_timeout * 3,
                               threads=s.threads)
    if m.status != "ok":
        logger.warning("profile of %s at %s: %s %s", model, shape_name(shape), m.status, m.note)
        return []
    return list(m.results.get("profile_train", []))
