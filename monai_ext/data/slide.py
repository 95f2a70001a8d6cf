"""Reading whole-slide images and level-0 masks tile by tile (tifffile), and the slide's microns per pixel.

MONAI's ``WSIReader`` with the tifffile backend decodes a whole pyramid level for every patch it returns; a
feature pipeline or the streaming APF planner (:mod:`monai_ext.wsi`) reads thousands of regions per slide, so
:class:`TiledSlide` decodes only the TIFF tiles (or strips) a region overlaps (``TiffPage.decode`` on each
segment's bytes). Pyramid levels are those of the first image series (Aperio SVS: the baseline and its
reductions; the thumbnail, label and macro images are other series). :class:`TiledMask` reads a one-channel
level-0 mask (PAIP's tumour masks) the same way, also as scattered point samples.

Thread safety: several threads may read one open slide. The file is read under a lock (seek + read only);
decoding runs outside it (JPEG / LZW decoders release the GIL). Decoded segments are kept in a bounded LRU
cache (``cache_tiles`` segments and ``cache_bytes`` bytes at most), shared by the threads.

Microns per pixel of level 0 (:func:`slide_mpp`): the Aperio ``MPP`` field of an SVS description, OME-XML
``PhysicalSizeX``/``Y`` (with their unit), or the TIFF ``X/YResolution`` tags with a ``ResolutionUnit`` of inch
or centimetre. Nothing else is trusted (a resolution without unit is tifffile's default, not a measurement).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import tifffile

from .common import DataError
from .limits import check_size

logger = logging.getLogger(__name__)

__all__ = ["MAX_REGION_PIXELS", "SLIDE_SUFFIXES", "SlideError", "TiledMask", "TiledSlide", "slide_id", "slide_mpp"]

#: the largest region decoded at once (pixels), a guard against a tile request that would decode a whole slide
MAX_REGION_PIXELS = 64 * 2**20
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


#: file suffixes of whole-slide images (Aperio SVS, pyramidal / OME TIFF)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff")


def slide_id(path: str | os.PathLike) -> str:
    """The slide's name: its file name without the slide suffix (TCGA barcodes keep their dots)."""
    name = Path(path).name
    for suffix in sorted(SLIDE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


class SlideError(DataError):
    """A slide (or mask) cannot be used; the message names the file and the problem."""


def slide_mpp(tif: tifffile.TiffFile) -> float | None:
    """Microns per pixel of level 0 (the mean of x and y), or None when the file does not state it."""
    page = tif.pages[0]
    desc = page.description or ""
    if tif.is_svs or desc.startswith("Aperio"):
        m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
        if m and float(m.group(1)) > 0:
            return float(m.group(1))
    if tif.is_ome and tif.ome_metadata:
        sx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        sy = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        factor = _OME_UNITS.get(unit.group(1) if unit else "µm")
        if sx and factor is not None and float(sx.group(1)) > 0:
            y = float(sy.group(1)) if sy else float(sx.group(1))
            return factor * (float(sx.group(1)) + y) / 2
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    if unit is not None and "XResolution" in tags and "YResolution" in tags:
        per = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # inch, centimetre -> microns
        (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
        if per is not None and xn > 0 and yn > 0 and not (xn == xd == 1):
            return per * (xd / xn + yd / yn) / 2
    return None


class _TiffLevels:
    """The pages (levels) of one open TIFF read segment by segment: tiles, or strips (full-width tiles)."""

    def __init__(self, path: str | os.PathLike, cache_tiles: int, cache_bytes: int) -> None:
        self.path = Path(path)
        self._io_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_nbytes = 0
        self.cache_tiles, self.cache_bytes = int(cache_tiles), int(cache_bytes)
        self.tif: tifffile.TiffFile
        self.pages: list[tifffile.TiffPage] = []
        self.levels: list[tuple[int, int]] = []

    def _check_pages(self) -> None:
        self.levels = [(int(p.imagelength), int(p.imagewidth)) for p in self.pages]
        try:  # one tile / strip of every level must fit the size limits (monai_ext.data.limits), header only
            for i, p in enumerate(self.pages):
                rows, cols = self._segment_shape(i)
                check_size(self.path, (rows, cols, int(p.samplesperpixel)), 1, f"level {i} tile")
        except DataError as e:
            raise SlideError(self.path, e.problem) from None
        for i, p in enumerate(self.pages):
            if int(p.samplesperpixel) > 1 and int(p.planarconfig) != 1:
                raise SlideError(self.path, f"level {i} stores its channels as separate planes (unsupported)")

    def _segment_shape(self, level: int) -> tuple[int, int]:
        """``(rows, cols)`` of one tile (strip: ``rowsperstrip`` rows, the full width) of ``level``."""
        p, (h, w) = self.pages[level], self.levels[level]
        if p.is_tiled:
            return int(p.tilelength), int(p.tilewidth)
        return min(int(p.rowsperstrip or h), h), w

    def segment(self, level: int, ty: int, tx: int) -> np.ndarray | None:
        """Decoded tile ``(ty, tx)`` of ``level`` as ``(rows, cols, samples)`` (read-only; cached), or None for
        an empty segment."""
        page = self.pages[level]
        sh, sw = self._segment_shape(level)
        index = ty * -(-self.levels[level][1] // sw) + tx
        key = (level, index)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        seg = None
        if count:
            with self._io_lock:
                fh = self.tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
            try:
                arr, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as e:  # noqa: BLE001 - corrupt or unsupported compression
                raise SlideError(self.path, f"level {level} tile {index} cannot be decoded ({type(e).__name__}: "
                                            f"{e})") from None
            seg = np.asarray(arr).reshape(shape[-3:])
            seg.flags.writeable = False
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = seg
                self._cache_nbytes += 0 if seg is None else seg.nbytes
                while len(self._cache) > self.cache_tiles or self._cache_nbytes > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cache_nbytes -= 0 if old is None else old.nbytes
        return seg

    def _region(self, level: int, y: int, x: int, h: int, w: int, fill: int, channels: int) -> np.ndarray:
        """``(h, w, channels)`` of ``level`` from (``y``, ``x``); ``fill`` outside the image or in empty tiles."""
        if h * w > MAX_REGION_PIXELS:
            raise SlideError(self.path, f"region {h}x{w} at level {level} exceeds {MAX_REGION_PIXELS} pixels")
        H, W = self.levels[level]
        sh, sw = self._segment_shape(level)
        out = np.full((h, w, channels), fill, self.pages[level].dtype if channels == 1 else np.uint8)
        for ty in range(max(y, 0) // sh, (min(y + h, H) - 1) // sh + 1):
            for tx in range(max(x, 0) // sw, (min(x + w, W) - 1) // sw + 1):
                seg = self.segment(level, ty, tx)
                if seg is None:
                    continue
                y0, x0 = ty * sh, tx * sw
                sy0, sy1 = max(y, y0), min(y + h, y0 + seg.shape[0], H)
                sx0, sx1 = max(x, x0), min(x + w, x0 + seg.shape[1], W)
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y: sy1 - y, sx0 - x: sx1 - x] = seg[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0, :channels]
        return out

    def close(self) -> None:
        self.tif.close()
        with self._cache_lock:
            self._cache.clear()
            self._cache_nbytes = 0

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TiledSlide(_TiffLevels):
    """One slide opened with tifffile: ``levels`` ``[(H, W)]``, ``mpp`` (level 0, or None), region reads.

    ``cache_tiles`` / ``cache_bytes`` bound the LRU cache of decoded tiles (default 256 tiles, 32 MiB)."""

    def __init__(self, path: str | os.PathLike, cache_tiles: int = 256, cache_bytes: int = 32 * 2**20) -> None:
        super().__init__(path, cache_tiles, cache_bytes)
        try:
            self.tif = tifffile.TiffFile(self.path)
            series = self.tif.series[0]
            self.pages = [lvl.keyframe for lvl in series.levels]
        except Exception as e:  # noqa: BLE001 - not a TIFF, truncated, unsupported
            raise SlideError(self.path, f"cannot open as a tiled TIFF / SVS ({type(e).__name__}: {e})") from None
        self._check_pages()
        for i, p in enumerate(self.pages):
            if p.samplesperpixel < 3:
                raise SlideError(self.path, f"level {i} has {p.samplesperpixel} channel(s); an RGB slide is needed")
            if p.dtype != np.uint8:
                raise SlideError(self.path, f"level {i} holds {p.dtype} samples; an 8-bit RGB slide is needed")
        self.mpp = slide_mpp(self.tif)

    def downsample(self, level: int) -> float:
        """Down-sampling factor of ``level`` relative to level 0 (the mean of both axes)."""
        (h0, w0), (h, w) = self.levels[0], self.levels[level]
        return (h0 / h + w0 / w) / 2

    def downsample_yx(self, level: int) -> tuple[float, float]:
        """Level-0 pixels per pixel of ``level`` along y and x (``H0 / H``, ``W0 / W``)."""
        (h0, w0), (h, w) = self.levels[0], self.levels[level]
        return h0 / h, w0 / w

    def best_level(self, downsample: float) -> int:
        """The level with the largest down-sample ``<= downsample`` (relative tolerance 1e-6), i.e. the coarsest
        level that still has at least one pixel per wanted output pixel; level 0 if none."""
        best, best_ds = 0, 0.0
        for i in range(len(self.levels)):
            ds = self.downsample(i)
            if ds <= float(downsample) * (1 + 1e-6) and ds > best_ds:
                best, best_ds = i, ds
        return best

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB at ``level`` from (``y``, ``x``) in that level's pixels; outside the image is
        white. Only the TIFF tiles (strips) the region overlaps are decoded, through the tile cache."""
        return self._region(level, int(y), int(x), int(h), int(w), 255, 3)

    def thumbnail_level(self, max_side: int = 4096) -> int:
        """The coarsest pyramid level (for tissue detection); callers reduce it further when it is large."""
        return len(self.levels) - 1


class TiledMask(_TiffLevels):
    """A one-channel level-0 mask TIFF (tiled or stripped; e.g. uint8 class labels): ``shape`` ``(H, W)``,
    region reads and point samples that decode only the tiles touched (0 outside the mask)."""

    def __init__(self, path: str | os.PathLike, cache_tiles: int = 256, cache_bytes: int = 32 * 2**20) -> None:
        super().__init__(path, cache_tiles, cache_bytes)
        try:
            self.tif = tifffile.TiffFile(self.path)
            self.pages = [self.tif.pages[0]]
        except Exception as e:  # noqa: BLE001 - not a TIFF, truncated
            raise SlideError(self.path, f"cannot open as a TIFF mask ({type(e).__name__}: {e})") from None
        self._check_pages()
        page = self.pages[0]
        if int(page.samplesperpixel) != 1 or page.dtype is None or page.dtype.kind not in "ub":
            raise SlideError(self.path, f"a mask must be one channel of unsigned integers, got "
                                        f"{page.samplesperpixel} x {page.dtype}")
        self.shape = self.levels[0]
        self.dtype = np.dtype(page.dtype)

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(h, w)`` of the mask from (``y``, ``x``); 0 outside it."""
        return self._region(0, int(y), int(x), int(h), int(w), 0, 1)[..., 0]

    def sample(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Mask values at integer points ``(ys, xs)`` (any equal shapes), 0 outside the mask; each tile that holds
        a point is decoded once."""
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        out = np.zeros(ys.shape, self.dtype)
        H, W = self.shape
        sh, sw = self._segment_shape(0)
        fy, fx, fo = ys.reshape(-1), xs.reshape(-1), out.reshape(-1)
        inside = np.nonzero((fy >= 0) & (fy < H) & (fx >= 0) & (fx < W))[0]
        seg_id = (fy[inside] // sh) * (-(-W // sw)) + fx[inside] // sw
        order = np.argsort(seg_id, kind="stable")
        inside, seg_id = inside[order], seg_id[order]
        starts = np.flatnonzero(np.r_[True, seg_id[1:] != seg_id[:-1]]) if seg_id.size else np.zeros(0, np.int64)
        for a, b in zip(starts, np.r_[starts[1:], seg_id.size].astype(np.int64)):
            ty, tx = fy[inside[a]] // sh, fx[inside[a]] // sw
            seg = self.segment(0, int(ty), int(tx))
            if seg is not None:
                pts = inside[a:b]
                fo[pts] = seg[fy[pts] - ty * sh, fx[pts] - tx * sw, 0]
        return out
