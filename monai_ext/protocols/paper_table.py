"""``monai-ext paper-table``: train and evaluate every variant of a bundle with the same seed and data, each
into its own folder, then one comparison table (the papers' Table 2 / Table II layout) with the training cost.

Every step is a ``python -m monai.bundle run`` subprocess in the bundle folder, as a user would run it; the
variant's ``ckpt_dir`` / ``output_dir`` / ``log_dir`` point into ``OUT/<variant>/`` so nothing is overwritten.
Peak memory is the training process's peak resident set size (``VmHWM``, see :func:`run_measured`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ext.reports.compare import compare_table
from monai_ext.utils.env import peak_rss_mib

from .variants import bundle_variants

logger = logging.getLogger(__name__)

__all__ = ["run_measured", "run_paper_table"]


def run_measured(cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
                 poll_s: float = 0.2) -> dict[str, float | None]:
    """Run ``cmd``; return its wall seconds and the child's peak RSS in MiB. Raise on failure.

    The peak is the child's ``VmHWM`` (Linux), read every ``poll_s`` seconds while it runs: ``ru_maxrss`` of a
    child (``getrusage(RUSAGE_CHILDREN)`` / ``wait4``) starts at the *parent's* resident size at the fork, so
    it over-reports small children of a large parent. A child shorter than ``poll_s`` may be missed (None or low);
    where ``/proc`` is missing it is None."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None)
    peak: float | None = None
    while proc.poll() is None:
        hwm = peak_rss_mib(proc.pid)
        if hwm is not None:
            peak = max(peak or 0.0, hwm)
        time.sleep(poll_s)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd))
    return {"seconds": seconds, "peak_rss_mib": peak}


def _override_args(overrides: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for k, v in overrides.items():
        args += [f"--{k}", json.dumps(v)]
    return args


def run_paper_table(bundle_dir: str | Path, variants: Sequence[str] | None = None, overlay: str = "cpu",
                    epochs: int | None = None, out: str | Path | None = None, seed: int = 0,
                    overrides: Mapping[str, Any] | None = None) -> Path:
    """Train + evaluate each variant of the bundle in ``bundle_dir``; write ``OUT/paper_table.md``; return it.

    ``OUT`` defaults to ``<bundle>/eval/paper_table/<overlay>-<UTC time>``; an existing non-empty ``OUT`` is
    refused (nothing is overwritten). ``overrides`` are applied to every variant after the overlay's own.
    """
    root = Path(bundle_dir).resolve()
    if not (root / "configs" / "train.yaml").is_file():
        raise FileNotFoundError(f"{root / 'configs' / 'train.yaml'} not found: not a bundle folder")
    spec = bundle_variants(root)
    names = list(variants or spec["default"])
    unknown = [v for v in names if v not in spec["variants"]]
    if unknown:
        raise ValueError(f"{root.name}: unknown variant(s) {unknown}; known: {sorted(spec['variants'])}")
    if overlay not in spec["overlays"]:
        raise ValueError(f"{root.name}: unknown overlay {overlay!r}; known: {sorted(spec['overlays'])}")
    ov = spec["overlays"][overlay]
    files = [str(root / "configs" / "train.yaml"), *(str(root / f) for f in ov.get("files", []))]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: overlay {overlay!r} of {root.name} needs this file")
    for name in names:  # a variant's own config files, before anything is trained
        for f in variant_spec(spec["variants"][name], Path("."))[0]:
            if not (root / f).is_file():
                raise FileNotFoundError(f"{root / f}: variant {name!r} of {root.name} needs this file")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = Path(out) if out else root / "eval" / "paper_table" / f"{overlay}-{stamp}"
    out_dir = out_dir.resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; give another --out (nothing is overwritten)")
    common = {**ov.get("overrides", {}), **(overrides or {}), "seed": seed}
    if epochs is not None:
        common["epochs"] = epochs
    meta = ["--meta_file", str(root / "configs" / "metadata.json"),
            "--logging_file", str(root / "configs" / "logging.conf")]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    eval_dirs: list[Path] = []
    for name in names:
        vdir = out_dir / name
        dirs = {"ckpt_dir": str(vdir / "models"), "output_dir": str(vdir / "eval"), "log_dir": str(vdir / "logs")}
        v_files, v_overrides = variant_spec(spec["variants"][name], out_dir)
        v_files = [*files, *(str(root / f) for f in v_files)]
        args = meta + _override_args({**common, **v_overrides, **dirs})
        vdir.mkdir(parents=True)
        logger.info("[%s] training: %s", name, " ".join(args[4:]))
        train = run_measured([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                              str(v_files), *args], cwd=root, env=env)
        logger.info("[%s] evaluating the best checkpoint on the test split", name)
        run_measured([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                      str([*v_files, str(root / "configs" / "evaluate.yaml")]), *args], cwd=root, env=env)
        n_epochs = _epochs_run(vdir / "models") or common.get("epochs")
        cost = {"variant": name, "overlay": overlay, "epochs": n_epochs, "train_seconds": round(train["seconds"], 2),
                "seconds_per_epoch": round(train["seconds"] / n_epochs, 3) if n_epochs else None,
                "peak_rss_mib": None if train["peak_rss_mib"] is None else round(train["peak_rss_mib"], 1),
                "overrides": {**common, **v_overrides}}
        (vdir / "eval" / "training_cost.json").write_text(json.dumps(cost, indent=2) + "\n")
        eval_dirs.append(vdir / "eval")
    table = compare_table(eval_dirs)
    path = out_dir / "paper_table.md"
    path.write_text(table)
    logger.info("comparison written to %s", path)
    return path


def variant_spec(variant: Mapping[str, Any], out_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """``(config files after the overlay's, overrides)`` of one variant. A variant is either overrides only
    (``{"network_def#attention": "softmax"}``) or ``{"files": [...], "overrides": {...}}`` (e.g. Sec. 3.4's
    ``configs/finetune_from_softmax.yaml``); ``{out}`` in a string override is this table's folder, so a variant can
    start from an earlier variant's checkpoint (``"{out}/softmax/models/model.pt"``)."""
    if set(variant) <= {"files", "overrides"} and "files" in variant:
        files, overrides = list(variant["files"]), dict(variant.get("overrides", {}))
    else:
        files, overrides = [], dict(variant)
    overrides = {k: v.replace("{out}", str(out_dir)) if isinstance(v, str) else v for k, v in overrides.items()}
    return files, overrides


def _epochs_run(ckpt_dir: Path) -> int | None:
    """Epochs the run completed, from ``models/run.json`` when it records them."""
    path = ckpt_dir / "run.json"
    if not path.is_file():
        return None
    body = json.loads(path.read_text())
    for key in ("epochs_completed", "epoch", "max_epochs", "epochs"):
        if isinstance(body.get(key), int):
            return int(body[key])
    return None
