"""Slides -> tile feature files (``monai-ext features``): tissue, tiles at a stated magnification, filters,
batched encoder inference, one feature file per slide (:mod:`monai_ext.data.wsi_features`).

Per slide:

1. level-0 microns per pixel from the file (:func:`monai_ext.features.slide.slide_mpp`), or ``slide_mpp`` when
   given; none -> the slide fails with a message saying so;
2. tile size at level 0 = ``tile * target_mpp / slide_mpp`` with ``target_mpp = 10 / magnification`` (20x =
   0.5 um/px, 40x = 0.25) or the given ``mpp``; tiles are read from the finest pyramid level at least as
   detailed as the target and resized to ``tile x tile`` pixels;
3. tissue: :func:`~monai_ext.features.tissue.tissue_mask` on the coarsest level (reduced to <= 2048 px);
   grid tiles with a tissue share below ``min_tissue`` are not read;
4. filters on each read tile: background (white-glass share > ``max_background``) and blur (Laplacian
   variance < ``blur_threshold``); the counts are logged and stored in the feature file's attributes;
5. the kept tiles through the encoder in batches (``torch.no_grad``, autocast on CUDA), written atomically.

Resumable: a slide whose feature file(s) exist is skipped ("already done"); a file only gets its final name
when complete. Sharded: with ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``), rank ``r`` takes slides
``r::world_size`` on ``cuda:LOCAL_RANK`` (or the CPU); no process group is needed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from monai_ext.data.wsi_features import feature_file, write_features
from monai_ext.networks.tile_encoder import TileEncoder

from .slide import SlideError, TiledSlide, slide_id
from .tissue import background_fraction, sharpness, tissue_mask

logger = logging.getLogger(__name__)

__all__ = ["FeatureSettings", "extract_features", "plan_tiles", "shard"]

THUMB_SIDE = 2048


@dataclass(frozen=True)
class FeatureSettings:
    """What ``monai-ext features`` does to each slide (see the module docstring)."""

    magnification: float | None = 20.0
    mpp: float | None = None
    slide_mpp: float | None = None
    tile: int = 224
    min_tissue: float = 0.5
    max_background: float = 0.5
    blur_threshold: float = 1e-3
    batch_size: int = 64
    formats: tuple[str, ...] = ("h5",)

    def target_mpp(self) -> float:
        if (self.magnification is None) == (self.mpp is None):
            raise ValueError("give exactly one of magnification (e.g. 20) or mpp (e.g. 0.5 microns per pixel)")
        value = self.mpp if self.mpp is not None else 10.0 / float(self.magnification)  # type: ignore[arg-type]
        if not value > 0:
            raise ValueError(f"target resolution must be positive, got {value}")
        return float(value)


def shard(items: Sequence[Any], rank: int | None = None, world: int | None = None) -> list[Any]:
    """``items[rank::world]`` with ``rank`` / ``world`` from torchrun's ``RANK`` / ``WORLD_SIZE`` by default."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return list(items)[rank::world]


def _thumbnail(slide: TiledSlide) -> tuple[np.ndarray, float]:
    """The coarsest level reduced to <= THUMB_SIDE pixels, and its down-sampling factor from level 0."""
    level = len(slide.levels) - 1
    h, w = slide.levels[level]
    f = max(1, int(np.ceil(max(h, w) / THUMB_SIDE)))
    rows = []
    step = max(f, (4096 // f) * f)  # read in horizontal bands of whole reduction blocks
    for y in range(0, h, step):
        band = slide.read_region(level, y, 0, min(step, h - y), w)
        hb, wb = band.shape[0] // f * f or f, w // f * f or f
        band = band[:hb, :wb]
        rows.append(band.reshape(hb // f, f, wb // f, f, 3).mean(axis=(1, 3)).astype(np.uint8) if f > 1 else band)
    return np.concatenate(rows, axis=0), slide.downsample(level) * f


def plan_tiles(slide: TiledSlide, settings: FeatureSettings) -> dict[str, Any]:
    """Grid of level-0 tile corners inside tissue: ``{"coords": (N, 2) int64 (x, y), "tile0": level-0 tile size,
    "level": read level, "read": read size at that level, "slide_mpp", "target_mpp", "grid", "tissue"}``."""
    mpp = slide.mpp if slide.mpp is not None else settings.slide_mpp
    if mpp is None:
        raise SlideError(slide.path, "the file states no microns per pixel (no Aperio MPP, OME PhysicalSizeX or TIFF "
                                     "resolution with a unit), so no magnification can be chosen; give the "
                                     "slide's level-0 resolution with --slide-mpp")
    target = settings.target_mpp()
    tile0 = int(round(settings.tile * target / mpp))
    if tile0 < 1:
        raise SlideError(slide.path, f"tile of {settings.tile} px at {target} um/px is below one level-0 pixel")
    level = max((i for i in range(len(slide.levels)) if slide.downsample(i) <= target / mpp + 1e-6), default=0)
    read = max(1, int(round(tile0 / slide.downsample(level))))
    thumb, f = _thumbnail(slide)
    mask = tissue_mask(thumb)
    h0, w0 = slide.levels[0]
    coords, grid = [], 0
    for y in range(0, h0 - tile0 + 1, tile0):
        for x in range(0, w0 - tile0 + 1, tile0):
            grid += 1
            ys, xs = int(y / f), int(x / f)
            ye, xe = max(ys + 1, int(np.ceil((y + tile0) / f))), max(xs + 1, int(np.ceil((x + tile0) / f)))
            if mask[ys:ye, xs:xe].mean() >= settings.min_tissue:
                coords.append((x, y))
    return {"coords": np.asarray(coords, np.int64).reshape(-1, 2), "tile0": tile0, "level": level, "read": read,
            "slide_mpp": float(mpp), "target_mpp": target, "grid": grid, "tissue": len(coords),
            "tissue_fraction": float(mask.mean())}


def _read_tile(slide: TiledSlide, plan: dict[str, Any], x: int, y: int, tile: int) -> np.ndarray:
    ds = slide.downsample(plan["level"])
    rgb = slide.read_region(plan["level"], int(round(y / ds)), int(round(x / ds)), plan["read"], plan["read"])
    if rgb.shape[0] != tile:
        rgb = np.asarray(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR, reducing_gap=None))
    return rgb


def _encode(encoder: TileEncoder, tiles: list[np.ndarray], device: torch.device) -> np.ndarray:
    batch = torch.from_numpy(np.stack(tiles)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        return encoder(batch).float().cpu().numpy()


def extract_slide(path: Path, out: Path, encoder: TileEncoder, settings: FeatureSettings,
                  device: torch.device, position: int = 0) -> dict[str, Any]:
    """Feature file(s) of one slide; returns its summary (status, counts, files)."""
    sid = slide_id(path)
    targets = [feature_file(out, sid, fmt) for fmt in settings.formats]
    if all(t.is_file() for t in targets):
        logger.info("%s: already done (%s), skipped", sid, ", ".join(str(t) for t in targets))
        return {"slide": sid, "status": "skipped", "reason": "feature file(s) exist",
                "files": [str(t) for t in targets]}
    t0 = time.perf_counter()
    with TiledSlide(path) as slide:
        plan = plan_tiles(slide, settings)
        counts = {"grid": plan["grid"], "tissue": plan["tissue"], "background": 0, "blurred": 0, "kept": 0}
        feats, coords, batch, batch_xy = [], [], [], []
        for x, y in tqdm(plan["coords"].tolist(), desc=sid[:23], unit="tile", position=position, leave=False,
                         disable=None):
            rgb = _read_tile(slide, plan, x, y, settings.tile)
            if background_fraction(rgb) > settings.max_background:
                counts["background"] += 1
                continue
            if sharpness(rgb) < settings.blur_threshold:
                counts["blurred"] += 1
                continue
            batch.append(rgb)
            batch_xy.append((x, y))
            if len(batch) == settings.batch_size:
                feats.append(_encode(encoder, batch, device))
                coords += batch_xy
                batch, batch_xy = [], []
        if batch:
            feats.append(_encode(encoder, batch, device))
            coords += batch_xy
    counts["kept"] = len(coords)
    logger.info("%s: %d grid tiles, %d in tissue, %d background, %d blurred -> %d kept", sid, counts["grid"],
                counts["tissue"], counts["background"], counts["blurred"], counts["kept"])
    if not coords:
        raise SlideError(path, f"no tile kept ({counts}); check --min-tissue / --max-background / --blur-threshold")
    features = np.concatenate(feats, axis=0)
    attrs = {"slide": sid, "source": str(path), "encoder": encoder.name, "patch_size": int(plan["tile0"]),
             "patch_level": 0, "tile_px": settings.tile, "target_mpp": plan["target_mpp"],
             "slide_mpp": plan["slide_mpp"], "read_level": int(plan["level"]),
             **{f"n_{k}": int(v) for k, v in counts.items()}}
    for target in targets:
        write_features(target, features, np.asarray(coords, np.int64), attrs)
    return {"slide": sid, "status": "done", "files": [str(t) for t in targets], "counts": counts,
            "feature_dim": int(features.shape[1]), "seconds": round(time.perf_counter() - t0, 2),
            "slide_mpp": plan["slide_mpp"], "tile0": int(plan["tile0"])}


def extract_features(slides: Sequence[Path], out: Path, encoder: TileEncoder, settings: FeatureSettings,
                     device: torch.device | None = None, rank: int | None = None,
                     world: int | None = None) -> list[dict[str, Any]]:
    """Run :func:`extract_slide` on this rank's share of ``slides``; a failing slide is reported (message naming
    the file) and the others continue. Writes ``<out>/features_rank<r>.json`` with every slide's summary."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if device is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    mine = shard(slides, rank, world)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.to(device).eval()
    logger.info("rank %d/%d: %d of %d slide(s) -> %s (%s, %s, tile %d px at %.3g um/px)", rank, world, len(mine),
                len(slides), out, encoder.name, device, settings.tile, settings.target_mpp())
    results = []
    for path in tqdm(mine, desc=f"slides (rank {rank})", unit="slide", position=0, disable=None):
        try:
            results.append(extract_slide(Path(path), out, encoder, settings, device, position=1))
        except (SlideError, OSError, ValueError) as e:
            logger.error("slide failed: %s", e)
            results.append({"slide": slide_id(path), "status": "failed", "reason": str(e), "file": str(path)})
    summary = {"rank": rank, "world_size": world, "settings": asdict(settings), "encoder": encoder.name,
               "slides": results}
    (out / f"features_rank{rank}.json").write_text(json.dumps(summary, indent=2) + "\n")
    n = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    logger.info("rank %d: %d done, %d skipped (already done), %d failed", rank, n["done"], n["skipped"], n["failed"])
    return results
