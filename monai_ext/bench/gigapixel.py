"""``monai-ext bench apf-gigapixel``: APF on whole slides of 16K-64K px, the streaming path against the in-memory
one where that fits.

Slides: synthetic PAIP cases written as tiled JPEG pyramids (:func:`~monai_ext.data.synthetic.paip_pyramid.
write_pyramidal_case`), square, ``size`` px at level 0, kept in ``work_dir`` between runs. Each measurement runs in
a fresh child process (``python -m monai_ext.bench.gigapixel``), so its peak resident memory (``ru_maxrss``) is its
own; the resident memory after imports is reported beside it.

- ``streaming``: :func:`~monai_ext.wsi.plan_slide` (edge counts tile by tile, tree from the counts) then
  :func:`~monai_ext.wsi.extract_slide_patches` (every leaf from the pyramid level matching its size), at the
  slide's level-0 scale, ``L`` tokens of ``p x p``.
- ``in memory``: level 0 decoded whole (``tifffile``), :func:`~monai_ext.transforms.plan_quadtree` and
  :func:`~monai_ext.transforms.extract_patches` on it, where the estimated need (about 7 bytes per pixel: RGB,
  grey, blur, edges, summed-area table) fits in the available memory; otherwise reported as not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.env import peak_rss_mib
from .machine import GIB, MachineInfo, available_memory_bytes
from .report import artifact_dir, fmt_num, md_table, update_section, write_csv

__all__ = ["GigapixelSettings", "run_gigapixel_bench"]

logger = logging.getLogger(__name__)
SECTION = "apf-gigapixel"
#: bytes per level-0 pixel the in-memory path needs at its peak (RGB 3, grey 1, blur 1, edges 1, padding, SAT)
IN_MEMORY_BYTES_PER_PIXEL = 7


@dataclass
class GigapixelSettings:
    sizes: tuple[int, ...] = (16384, 32768, 65536)
    num_tokens: int = 4096
    patch_size: int = 16
    blur_kernel: int = 7
    tile: int = 2048
    workers: int = 2
    work_dir: Path = Path("/tmp/monai_ext_gigapixel")
    timeout: float = 1800.0


def _slide(work_dir: Path, size: int, workers: int) -> Path:
    """The synthetic slide of ``size`` px in ``work_dir`` (written once, then reused)."""
    from monai_ext.data.synthetic.paip_pyramid import write_pyramidal_case

    case = f"bench_{size}"
    path = work_dir / f"{case}.svs"
    if not path.is_file():
        t = time.monotonic()
        logger.info("writing the synthetic %d px slide %s", size, path)
        write_pyramidal_case(work_dir, case, size, seed=0, workers=workers, progress=True)
        logger.info("wrote %s in %.0f s", path, time.monotonic() - t)
    return path


def _measure(mode: str, slide: str, s: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process (the child): seconds to plan and to extract (imports done before the
    clock starts), peak RSS."""
    import numpy as np
    import tifffile

    from monai_ext.data.slide import TiledSlide
    from monai_ext.transforms import extract_patches, plan_quadtree
    from monai_ext.wsi import extract_slide_patches, plan_slide

    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    if mode == "streaming":
        with TiledSlide(slide) as sl:
            meta = plan_slide(sl, scale=1.0, patch_size=s["patch_size"], num_tokens=s["num_tokens"],
                              blur_kernel=s["blur_kernel"], tile=s["tile"], workers=s["workers"])
            t1 = time.perf_counter()
            tokens = extract_slide_patches(sl, meta, workers=s["workers"])
    else:
        with tifffile.TiffFile(slide) as tif:
            level0 = tif.series[0].levels[0].asarray(maxworkers=s["workers"])
        image = np.moveaxis(level0, -1, 0)  # (3, H, W) view, no copy
        t_read = time.perf_counter()
        meta = plan_quadtree(image, patch_size=s["patch_size"], num_tokens=s["num_tokens"],
                             blur_kernel=s["blur_kernel"])
        t1 = time.perf_counter()
        tokens = extract_patches(image, meta)
        logger.info("in memory: level 0 decoded in %.1f s", t_read - t0)
    t2 = time.perf_counter()
    return {"plan_s": t1 - t0, "extract_s": t2 - t1, "total_s": t2 - t0, "leaves": int(meta["num_leaves"]),
            "tokens_shape": list(np.shape(tokens)), "rss_start_mib": rss0, "peak_rss_mib": peak_rss_mib()}


def _child(mode: str, slide: Path, s: GigapixelSettings) -> dict[str, Any]:
    args = {"patch_size": s.patch_size, "num_tokens": s.num_tokens, "blur_kernel": s.blur_kernel, "tile": s.tile,
            "workers": s.workers}
    cmd = [sys.executable, "-m", "monai_ext.bench.gigapixel", mode, str(slide), json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=s.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {s.timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_gigapixel_bench(s: GigapixelSettings, out: Path, machine: MachineInfo, command: str) -> dict[str, Any]:
    """Measure every size, both paths where they fit; write the ``apf-gigapixel`` section and its CSV."""
    s.work_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for size in s.sizes:
        slide = _slide(s.work_dir, size, s.workers)
        for mode in ("streaming", "in_memory"):
            need = IN_MEMORY_BYTES_PER_PIXEL * size * size
            row: dict[str, Any] = {"size": size, "path": mode, "L": s.num_tokens, "p": s.patch_size,
                                   "slide_mib": round(slide.stat().st_size / 2**20, 1)}
            if mode == "in_memory" and need > 0.8 * available_memory_bytes():
                row["error"] = f"not run: needs ~{need / GIB:.0f} GiB, {available_memory_bytes() / GIB:.0f} available"
            else:
                logger.info("apf-gigapixel: %s at %d px", mode, size)
                row.update(_child(mode, slide, s))
            logger.info("apf-gigapixel: %s", row)
            rows.append(row)
    _report(rows, s, out, machine, command)
    return {"rows": rows}


def _report(rows: list[dict[str, Any]], s: GigapixelSettings, out: Path, machine: MachineInfo, command: str) -> None:
    art = artifact_dir(out)
    csv_path = write_csv(art / "apf_gigapixel.csv", rows)
    stream = {r["size"]: r for r in rows if r["path"] == "streaming"}
    table = []
    for r in rows:
        ref = stream.get(r["size"], {})
        ok = "error" not in r
        table.append({
            "size": f"{r['size']:,} px", "path": r["path"].replace("_", " "), "slide": f"{r['slide_mib']} MiB",
            "plan": fmt_num(r.get("plan_s")) + " s" if ok else "-",
            "extract": fmt_num(r.get("extract_s")) + " s" if ok else "-",
            "total": fmt_num(r.get("total_s")) + " s" if ok else "-",
            "peak": f"{r['peak_rss_mib']:.0f} MiB" if ok else "-",
            "x": (f"{r['total_s'] / ref['total_s']:.2f}" if ok and "total_s" in ref else "-"),
            "leaves": str(r.get("leaves", "-")), "note": r.get("error", ""),
        })
    cols = [("size", "slide side"), ("path", "path"), ("slide", "file"), ("plan", "plan"), ("extract", "extract"),
            ("total", "total"), ("peak", "peak RSS"), ("x", "time / streaming"), ("leaves", "leaves"),
            ("note", "note")]
    body = "\n".join([
        "## APF on gigapixel slides: streaming vs in memory",
        "",
        machine.markdown(command),
        "",
        f"Square synthetic PAIP slides (tiled JPEG pyramids, {s.work_dir}); APF fixed mode, L = {s.num_tokens} "
        f"tokens of {s.patch_size} x {s.patch_size} px, blur {s.blur_kernel}, at the slide's level-0 scale. "
        f"Streaming: tiles of {s.tile} px, {s.workers} worker threads. Each row is one child process: peak RSS "
        "includes Python, torch and MONAI (the RSS after imports, `rss_start_mib` in the CSV, is about 0.6 GiB); "
        "times start after the imports. "
        "In memory: level 0 decoded whole, then `plan_quadtree` and `extract_patches`.",
        "",
        md_table(table, cols),
        "",
        f"CSV: `{csv_path.name}`.",
    ])
    update_section(out, SECTION, body)


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m monai_ext.bench.gigapixel MODE SLIDE JSON`` prints one JSON line."""
    p = argparse.ArgumentParser(description="one apf-gigapixel measurement (used by monai-ext bench)")
    p.add_argument("mode", choices=("streaming", "in_memory"))
    p.add_argument("slide")
    p.add_argument("settings", help="JSON: patch_size, num_tokens, blur_kernel, tile, workers")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sys.stdout.write(json.dumps(_measure(a.mode, a.slide, json.loads(a.settings))) + "\n")  # the parent reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())
