"""Benchmarks (commands, not tests): ``monai-ext bench attention|apf|3d|all``.

Modules:
    machine    CPU, cores, memory, load, measured fp32 GEMM GFLOP/s and copy bandwidth, versions
    runner     worker processes (forkserver), interleaved repeats, time-outs, medians
    worker     the worker process: per-command time and peak memory (RSS high-water mark)
    tasks      what the workers time: ViT (ours / MONAI's), one attention layer, profiles
    attention  attention scaling (196 ... 16384 tokens) vs MONAI's ViT, achieved GFLOP/s
    apf        APF-UNETR vs UNETR on PAIP-like images: tokens, step time, memory, Dice, patching time
    vit3d      3D ViT on DUKE-sized volumes
    report     markdown sections replaced in place, CSV, PNG plots
    cli        the ``bench`` sub-command

Results go to ``docs/benchmarks.md`` (one section per benchmark) and ``docs/benchmarks/`` (CSV, PNG).
"""
