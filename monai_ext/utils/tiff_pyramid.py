"""Streamed pyramidal TIFF writer: images of any size written tile by tile, in bounded memory.

:func:`write_pyramid` asks a ``render(level, y, x, h, w)`` callback for one tile at a time and hands the tiles to
tifffile's ``TiffWriter`` as an iterator, so no level is ever held whole. Layout: one top-level tiled page per
level (level 0 first, each level half the previous one, :func:`pyramid_shapes`), reduced levels marked as such
(subfiletype 1). tifffile reads that as one series with ``series[0].levels`` and MONAI's
``WSIReader(backend="tifffile")`` (which counts top-level pages) sees the same levels. A ``description`` that
starts with ``"Aperio "`` (what tifffile and OpenSlide take for an SVS) gets Aperio's page order instead: level 0,
a stripped thumbnail (the coarsest level), then the reduced levels (subfiletype 0), as real SVS files have.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from tqdm import tqdm

logger = logging.getLogger(__name__)

#: ``render(level, y, x, h, w) -> (h, w, C)`` (or ``(h, w)`` for one channel) at down-sample ``2**level``
Render = Callable[[int, int, int, int, int], np.ndarray]
COMPRESSIONS = (None, "none", "jpeg", "zlib", "deflate", "lzw", "zstd", "webp", "png")
APERIO_PREFIX = "Aperio "


def pyramid_shapes(size: tuple[int, int], min_side: int = 512) -> list[tuple[int, int]]:
    """``(H, W)`` of every level: level ``k`` is ``(ceil(H / 2**k), ceil(W / 2**k))``; levels are added while
    the larger side of the previous level exceeds ``min_side``."""
    h, w = _check_size(size)
    if int(min_side) < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    shapes = [(h, w)]
    while max(shapes[-1]) > min_side:
        k = len(shapes)
        shapes.append((-(-h // 2**k), -(-w // 2**k)))
    return shapes


def _check_size(size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {(h, w)}")
    return h, w


def _check_args(
    path: Path, size: Any, channels: int, dtype: Any, tile: int, compression: str | None, quality: int, workers: int
) -> tuple[int, int]:
    hw = _check_size(size)
    if channels not in (1, 3):
        raise ValueError(f"{path}: channels must be 1 (minisblack) or 3 (rgb), got {channels}")
    if int(tile) < 16 or int(tile) % 16:
        raise ValueError(f"{path}: tile must be a positive multiple of 16 (TIFF tiles), got {tile}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"{path}: compression must be one of {COMPRESSIONS}, got {compression!r}")
    if compression == "jpeg" and np.dtype(dtype) != np.uint8:
        raise ValueError(f"{path}: JPEG compression needs uint8 data, got {np.dtype(dtype)}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"{path}: quality must be in 1..100, got {quality}")
    if int(workers) < 1:
        raise ValueError(f"{path}: workers must be >= 1, got {workers}")
    return hw


def _ordered(fn: Callable[..., np.ndarray], items: Iterator[tuple], workers: int) -> Iterator[np.ndarray]:
    """``fn(*item)`` for every item, in order; with ``workers`` > 1 in a thread pool at most ``2 * workers``
    results ahead (bounded memory)."""
    if workers <= 1:
        for item in items:
            yield fn(*item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="pyramid") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, *item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def write_pyramid(
    path: str | os.PathLike,
    size: tuple[int, int],
    render: Render,
    *,
    channels: int = 3,
    dtype: Any = np.uint8,
    tile: int = 512,
    min_side: int = 512,
    compression: str | None = "jpeg",
    quality: int = 90,
    mpp: float | None = None,
    description: str | None = None,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> list[tuple[int, int]]:
    """Write a tiled pyramidal TIFF of level-0 ``size`` ``(H, W)`` rendered tile by tile; returns the level shapes.

    ``render(level, y, x, h, w)`` returns that region of level ``level`` (down-sample ``2**level``, shapes of
    :func:`pyramid_shapes`) as ``(h, w, channels)`` (``(h, w)`` or ``(h, w, 1)`` when ``channels == 1``) of
    ``dtype``; it is called once per ``tile x tile`` tile (edge tiles smaller), row-major, level by level, from up
    to ``workers`` threads (tiles are written in order). Memory: a few tiles, whatever ``size``.
    ``compression``: ``"jpeg"`` (uint8; ``quality``) for RGB slides, ``"zlib"``/``"lzw"``/``None`` for label
    maps. ``mpp``: level-0 microns per pixel, written as resolution tags (centimetre unit) of every level.
    Written to a temporary file beside ``path``, then renamed; an existing ``path`` is refused unless
    ``overwrite``. Raises ``ValueError`` on bad arguments or a tile of the wrong shape / dtype.
    """
    path = Path(path)
    h0, w0 = _check_args(path, size, channels, dtype, tile, compression, quality, workers)
    dtype = np.dtype(dtype)
    tile, workers = int(tile), int(workers)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"{path}: mpp must be a positive number of microns per pixel, got {mpp}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    shapes = pyramid_shapes((h0, w0), min_side)
    aperio = bool(description) and description.startswith(APERIO_PREFIX)
    want = (channels,) if channels > 1 else ()

    def checked(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        arr = np.asarray(render(level, y, x, h, w))
        if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.shape != (h, w, *want) or arr.dtype != dtype:
            raise ValueError(
                f"{path}: render returned {arr.shape} {arr.dtype} for level {level} tile at (y={y}, x={x}); "
                f"expected {(h, w, *want)} {dtype}"
            )
        return arr

    def tiles(level: int) -> Iterator[np.ndarray]:
        h, w = shapes[level]
        boxes = (
            (level, y, x, min(tile, h - y), min(tile, w - x)) for y in range(0, h, tile) for x in range(0, w, tile)
        )
        for arr in _ordered(checked, boxes, workers):
            bar.update(1)
            yield arr

    ntiles = sum(-(-h // tile) * -(-w // tile) for h, w in shapes)
    photometric = "rgb" if channels == 3 else "minisblack"
    tile_bytes = tile * tile * channels * dtype.itemsize
    common: dict[str, Any] = {
        "photometric": photometric,
        "metadata": None,
        "compression": None if compression == "none" else compression,
        "maxworkers": workers,
        "buffersize": 2 * workers * tile_bytes,
    }
    if compression == "jpeg":
        common["compressionargs"] = {"level": int(quality)}

    def resolution(h: int, w: int) -> dict[str, Any]:
        if mpp is None:
            return {}
        # pixels per centimetre at this level: 1e4 / (mpp * down-sample)
        return {"resolution": (1e4 * w / (mpp * w0), 1e4 * h / (mpp * h0)), "resolutionunit": "CENTIMETER"}

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    big = h0 * w0 * channels * dtype.itemsize > 2**31  # BigTIFF past 2 GiB of raw pixels (offsets may pass 4 GiB)
    bar = tqdm(total=ntiles, desc=path.name, unit="tile", disable=not progress)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
            for level, (h, w) in enumerate(shapes):
                if level == 1 and aperio:
                    _write_thumbnail(tw, shapes, checked, tile, description, common, resolution)
                desc = description if level == 0 else None
                if level and aperio:
                    desc = _level_description(str(description), shapes, level)
                tw.write(
                    tiles(level),
                    shape=(h, w, *want),
                    dtype=dtype,
                    tile=(tile, tile),
                    subfiletype=0 if level == 0 or aperio else 1,
                    description=desc,
                    **resolution(h, w),
                    **common,
                )
        os.replace(tmp, path)
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    logger.info("wrote %s: %d level(s) %s, %d tiles", path, len(shapes), shapes, ntiles)
    return shapes


def _level_description(description: str, shapes: list[tuple[int, int]], level: int) -> str:
    """Aperio's description of a reduced page: its header line, then ``W0xH0 -> WxH``."""
    (h0, w0), (h, w) = shapes[0], shapes[level]
    return f"{description.splitlines()[0]}\r\n{w0}x{h0} -> {w}x{h}"


def _write_thumbnail(
    tw: tifffile.TiffWriter,
    shapes: list[tuple[int, int]],
    checked: Callable[..., np.ndarray],
    tile: int,
    description: str,
    common: dict[str, Any],
    resolution: Callable[[int, int], dict[str, Any]],
) -> None:
    """Aperio's second page: the coarsest level (at most ``min_side`` a side), stripped, rendered tile by tile."""
    level = len(shapes) - 1
    h, w = shapes[level]
    thumb = None
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            part = checked(level, y, x, min(tile, h - y), min(tile, w - x))
            if thumb is None:
                thumb = np.empty((h, w, *part.shape[2:]), part.dtype)
            thumb[y : y + part.shape[0], x : x + part.shape[1]] = part
    tw.write(
        thumb,
        rowsperstrip=16,
        subfiletype=0,
        description=_level_description(description, shapes, level),
        **resolution(h, w),
        **{k: v for k, v in common.items() if k not in ("maxworkers", "buffersize")},
    )
