"""Time APF patching / unpatching of one RGB image (the H&E example of
``scripts/apf_upper_bound.py``, up-scaled for the large sizes).

Usage::

    .venv/bin/python scripts/apf_timing.py [--sizes 1024 8192] [--repeats 10]

Prints wall time (min / median) and process CPU time per call, with the load average, since
the machine may be shared. The project's benchmark suite (``monai_ext.bench``) owns the
official numbers; this script is the quick check quoted in ``docs/apf.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apf_upper_bound import DEFAULT_SVS, he_example  # noqa: E402

from monai_ext.transforms import quadtree_patch, quadtree_unpatch  # noqa: E402

logger = logging.getLogger("apf_timing")

# side -> (quadtree_patch kwargs), after the paper's settings (blur 3 at 512-1024, 7 at 4096+)
SETTINGS = {
    512: dict(patch_size=4, num_tokens=1024, blur_kernel=3),
    1024: dict(patch_size=4, num_tokens=1024, blur_kernel=3),
    2048: dict(patch_size=8, num_tokens=1024, blur_kernel=5),
    4096: dict(patch_size=16, num_tokens=2116, blur_kernel=7),
    8192: dict(patch_size=32, num_tokens=4096, blur_kernel=7),
}


def timed(fn, repeats: int) -> tuple[float, float, float, object]:
    out = fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), float(np.median(walls)), float(np.median(cpus)), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--svs", default=str(DEFAULT_SVS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import cv2

    base, _ = he_example(args.svs, 1024)
    lines = [
        f"load average before: {os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}, "
        f"OpenCV threads {cv2.getNumThreads()}",
        "| side | settings | leaves | patch wall min / median (ms) | patch CPU (ms) "
        "| unpatch K=2 + argmax wall min (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for side in args.sizes:
        kw = SETTINGS.get(side, dict(patch_size=max(4, side // 256), num_tokens=1024, blur_kernel=7))
        img = base if side == 1024 else np.stack(
            [cv2.resize(c, (side, side), interpolation=cv2.INTER_LINEAR) for c in base]
        )
        reps = args.repeats if side <= 2048 else max(2, args.repeats // 4)
        pmin, pmed, pcpu, (grid, meta) = timed(lambda: quadtree_patch(img, **kw), reps)  # noqa: B023 (called here)
        pred = torch.rand(2, *grid.shape[1:])
        umin, _, _, _ = timed(lambda: quadtree_unpatch(pred, meta, argmax=True), reps)  # noqa: B023
        lines.append(
            f"| {side} | p={kw['patch_size']}, L={kw['num_tokens']}, k={kw['blur_kernel']} | {meta['num_leaves']} "
            f"| {pmin * 1e3:.1f} / {pmed * 1e3:.1f} | {pcpu * 1e3:.1f} | {umin * 1e3:.1f} |"
        )
    lines.append(f"load average after: {os.getloadavg()[0]:.1f}")
    logger.info("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
