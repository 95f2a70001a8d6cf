"""``monai-ext bench attention|apf|3d|attention-zoo|apf-gigapixel|all``: benchmarks that write
``docs/benchmarks.md`` sections.

Examples::

    monai-ext bench all                       # everything, ~15-25 min on a 2-core machine
    monai-ext bench all --quick               # smoke test, small sizes, one repeat
    monai-ext bench attention --sizes 224 512 --models softmax_free monai_plain
    monai-ext bench apf --apf-sizes 512 1024
    monai-ext bench 3d --out /tmp/bench.md
    monai-ext bench attention-zoo --zoo-settings paper cpu   # the efficient-transformers benchmark's table
    monai-ext bench apf-gigapixel --giga-sizes 16384 32768 65536  # APF on whole slides, streaming vs in memory

Each run replaces only its own section(s) of the markdown file and writes CSV/PNG files to the
folder beside it named after it (``docs/benchmarks/``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

TARGETS = ("attention", "apf", "3d", "attention-zoo", "apf-gigapixel", "all")


def _positive_int(v: str) -> int:
    i = int(v)
    if i <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return i


def _shape3d(v: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(x) for x in v.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected a volume size like 256x256x32, got {v!r}")
    return dims  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (speed, memory, Dice) written to docs/benchmarks.md",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=TARGETS, help="which benchmark; 'all' runs attention, apf and 3d")
    g = p.add_argument_group("attention-zoo")
    g.add_argument("--zoo-settings", nargs="+", choices=("paper", "cpu"), default=None,
                   help="paper (3x224x224, ~28M parameters) and/or cpu (tiny preset, 1x112x112) (both; quick cpu)")
    g.add_argument("--zoo-models", nargs="+", default=None,
                   help="attention names and/or resnet50 (all: softmax linformer performer fastformer xca window "
                        "softmax_free sima resnet50)")
    p.add_argument("--quick", action="store_true", help="smoke test: small sizes, one repeat (about 1-2 min)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"),
                   help="markdown file (sections replaced in place); CSV/PNG go to the folder beside it")
    p.add_argument("--repeats", type=_positive_int, default=None, help="timed repeats per configuration (3; quick 1)")
    p.add_argument("--step-timeout", type=float, default=None,
                   help="seconds one call may take before it is recorded as timed out (240; quick 60)")
    p.add_argument("--config-budget", type=float, default=None,
                   help="seconds of timed repeats per configuration before fewer repeats are used (60; quick 15)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads per worker (attention/3d: torch's default, quick 1; apf: 1). One thread keeps "
                        "timings of small-op-heavy models stable on a shared machine, where every multi-threaded op "
                        "waits for its second thread to be scheduled")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM/bandwidth measurement (reported as 0)")
    g = p.add_argument_group("attention / 3d")
    g.add_argument("--sizes", type=_positive_int, nargs="+", default=None,
                   help="2D image sizes in px (224 512 1024 1440 2048; quick 224 448)")
    g.add_argument("--patch", type=_positive_int, default=16, help="2D patch size (16)")
    g.add_argument("--hidden", type=_positive_int, default=256, help="hidden size (256)")
    g.add_argument("--heads", type=_positive_int, default=8, help="attention heads (8)")
    g.add_argument("--layers", type=_positive_int, default=2, help="transformer layers (2)")
    g.add_argument("--mlp", type=_positive_int, default=1024, help="MLP size (1024)")
    g.add_argument("--models", nargs="+", default=None,
                   help="subset of softmax_free sima softmax monai_plain monai_sdpa (all)")
    g.add_argument("--no-core", action="store_true", help="skip the attention-layer GFLOP/s pass")
    g.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass")
    g.add_argument("--volumes", type=_shape3d, nargs="+", default=None,
                   help="3D volume sizes, e.g. 256x256x32 512x512x64 (quick 128x128x16)")
    g = p.add_argument_group("apf")
    g.add_argument("--apf-sizes", type=_positive_int, nargs="+", default=None,
                   help="image sizes of the APF timing pass (512 1024 2048; quick 256)")
    g.add_argument("--apf-dice-sizes", type=_positive_int, nargs="+", default=None,
                   help="image sizes with a short training run for Dice (512; quick 256)")
    g.add_argument("--apf-patches", type=_positive_int, nargs="+", default=None,
                   help="APF min patch sizes (2 4 8; quick 8)")
    g.add_argument("--apf-tokens", type=_positive_int, default=None, help="APF sequence length L, a square (1024)")
    g.add_argument("--apf-attention", default="softmax_free", help="attention of both UNETRs (softmax_free)")
    g.add_argument("--apf-steps", type=_positive_int, default=None, help="training steps per Dice run (80; quick 4)")
    g.add_argument("--apf-images", type=_positive_int, nargs=2, default=None, metavar=("TRAIN", "VAL"),
                   help="synthetic images for training and validation (6 3; quick 2 1)")
    g.add_argument("--apf-train-budget", type=float, default=None,
                   help="seconds a Dice training run may be predicted to take (240; quick 30)")
    g.add_argument("--patching-sizes", type=_positive_int, nargs="+", default=None,
                   help="image sizes of the patching-time measurement (1024 8192; quick 1024)")
    g = p.add_argument_group("apf-gigapixel")
    g.add_argument("--giga-sizes", type=_positive_int, nargs="+", default=None,
                   help="square slide sides in px (16384 32768 65536; quick 4096 8192)")
    g.add_argument("--giga-tokens", type=_positive_int, default=4096, help="APF sequence length L (4096)")
    g.add_argument("--giga-patch", type=_positive_int, default=16, help="APF patch size p (16)")
    g.add_argument("--giga-workers", type=_positive_int, default=2, help="reading / edge threads (2)")
    g.add_argument("--giga-dir", type=Path, default=None,
                   help="folder for the synthetic slides, kept between runs (/tmp/monai_ext_gigapixel)")
    p.set_defaults(func=run)


def _pick(value: Any, full: Any, quick: Any, is_quick: bool) -> Any:
    if value is not None:
        return value
    return quick if is_quick else full


def _threads(args: argparse.Namespace):
    return args.threads if args.threads is not None else (1 if args.quick else None)


def attention_settings(args: argparse.Namespace, volumes: bool = False):
    from .attention import VARIANTS, AttentionBenchSettings

    q = args.quick
    s = AttentionBenchSettings(
        sizes=tuple(_pick(args.sizes, (224, 512, 1024, 1440, 2048), (224, 448), q)),
        patch=args.patch, hidden=args.hidden, heads=args.heads, layers=args.layers, mlp=args.mlp,
        models=tuple(args.models or VARIANTS),
        repeats=_pick(args.repeats, 3, 1, q),
        step_timeout=_pick(args.step_timeout, 240.0, 60.0, q),
        config_budget=_pick(args.config_budget, 60.0, 15.0, q),
        core_budget=_pick(args.config_budget, 20.0, 5.0, q),
        core=not args.no_core, profile=not args.no_profile, threads=_threads(args),
    )
    if volumes:
        s.volumes = tuple(_pick(args.volumes, ((256, 256, 32), (512, 512, 64)), ((128, 128, 16),), q))
        s.in_channels = 1
        s.core = False
        s.profile = False
    return s


def apf_settings(args: argparse.Namespace):
    from .apf import APFBenchSettings

    q = args.quick
    images = _pick(args.apf_images, (6, 3), (2, 1), q)
    return APFBenchSettings(
        sizes=tuple(_pick(args.apf_sizes, (512, 1024, 2048), (256,), q)),
        dice_sizes=tuple(_pick(args.apf_dice_sizes, (512,), (256,), q)),
        patches=tuple(_pick(args.apf_patches, (2, 4, 8), (8,), q)),
        tokens=_pick(args.apf_tokens, 1024, 256, q),
        attention=args.apf_attention,
        steps=_pick(args.apf_steps, 80, 4, q),
        train_images=images[0], val_images=images[1],
        train_budget=_pick(args.apf_train_budget, 240.0, 30.0, q),
        patching_sizes=tuple(_pick(args.patching_sizes, (1024, 8192), (1024,), q)),
        repeats=_pick(args.repeats, 3, 1, q),
        step_timeout=_pick(args.step_timeout, 240.0, 60.0, q),
        config_budget=_pick(args.config_budget, 60.0, 15.0, q),
        # one thread: APF-UNETR's many small ops make two-thread timings hostage to any other process on
        # a shared 2-core machine (each OpenMP region waits for its second thread to be scheduled: the
        # same APF-UNETR step measured 0.1 s and 4.7 s minutes apart); --threads overrides
        threads=args.threads if args.threads is not None else 1,
    )


def _run_zoo(args: argparse.Namespace, out: Path, machine_for, command: str) -> dict[str, Any]:
    import dataclasses

    import torch

    from .zoo import SETTINGS, ZOO_MODELS, run_zoo_bench

    names = args.zoo_settings or (["cpu"] if args.quick else ["paper", "cpu"])
    settings = [dataclasses.replace(SETTINGS[n]) for n in names]
    for s in settings:
        if args.repeats is not None or args.quick:
            s.repeats = _pick(args.repeats, s.repeats, 1, args.quick)
        if args.quick:
            s.batch = 2
    models = dict(ZOO_MODELS)
    if args.zoo_models:
        known = {v or "resnet50": k for k, v in ZOO_MODELS.items()}
        unknown = sorted(set(args.zoo_models) - set(known))
        if unknown:
            raise SystemExit(f"bench attention-zoo: unknown --zoo-models {unknown}; choose from {sorted(known)}")
        models = {known[m]: ZOO_MODELS[known[m]] for m in args.zoo_models}
    threads = _threads(args)
    if threads:
        torch.set_num_threads(threads)
    return run_zoo_bench(settings, out, machine_for(threads), command, models)


def run(args: argparse.Namespace) -> int:
    from .machine import MachineInfo, command_line, machine_info

    t0 = time.monotonic()
    out = Path(args.out)
    command = command_line()
    targets = ("attention", "apf", "3d") if args.target == "all" else (args.target,)
    import torch

    default_threads = torch.get_num_threads()

    def machine_for(threads: Any) -> MachineInfo:
        """Measured afresh for each section (load and date are the section's), GEMM with the workers'
        thread count."""
        return machine_info(measure=not args.no_gemm, threads=threads or default_threads)

    summary: dict[str, Any] = {}
    for target in targets:
        t = time.monotonic()
        if target == "attention":
            from .attention_report import run_attention_bench

            s = attention_settings(args)
            summary[target] = run_attention_bench(s, out, machine_for(s.threads), command)
        elif target == "3d":
            from .vit3d import run_3d_bench

            s = attention_settings(args, volumes=True)
            summary[target] = run_3d_bench(s, out, machine_for(s.threads), command)
        elif target == "attention-zoo":
            summary[target] = _run_zoo(args, out, machine_for, command)
        elif target == "apf-gigapixel":
            from .gigapixel import GigapixelSettings, run_gigapixel_bench

            g = GigapixelSettings(num_tokens=args.giga_tokens, patch_size=args.giga_patch, workers=args.giga_workers)
            g.sizes = tuple(_pick(args.giga_sizes, g.sizes, (4096, 8192), args.quick))
            if args.giga_dir is not None:
                g.work_dir = args.giga_dir
            summary[target] = run_gigapixel_bench(g, out, machine_for(None), command)
        elif target == "apf":
            from .apf import run_apf_bench

            a = apf_settings(args)
            summary[target] = run_apf_bench(a, out, machine_for(a.threads), command)
        logger.info("bench %s: done in %.0f s", target, time.monotonic() - t)
    logger.info("bench %s: wrote %s in %.0f s", args.target, out, time.monotonic() - t0)
    return 0
