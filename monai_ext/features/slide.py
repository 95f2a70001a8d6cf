"""Reading whole-slide images tile by tile (tifffile), and their microns per pixel.

MONAI's ``WSIReader`` with the tifffile backend decodes a whole pyramid level for every patch it returns; a
feature pipeline reads thousands of tiles per slide, so :class:`TiledSlide` decodes only the TIFF tiles a
region overlaps (``TiffPage.decode`` on each tile's bytes). Pyramid levels are those of the first image series
(Aperio SVS: the baseline and its reductions; the thumbnail, label and macro images are other series).

Microns per pixel of level 0 (:func:`slide_mpp`): the Aperio ``MPP`` field of an SVS description, OME-XML
``PhysicalSizeX``/``Y`` (with their unit), or the TIFF ``X/YResolution`` tags with a ``ResolutionUnit`` of inch
or centimetre. Nothing else is trusted (a resolution without unit is tifffile's default, not a measurement).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import tifffile

from monai_ext.data.common import DataError
from monai_ext.data.limits import check_size

logger = logging.getLogger(__name__)

__all__ = ["SLIDE_SUFFIXES", "SlideError", "TiledSlide", "find_slides", "slide_mpp"]

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff")
#: the largest region decoded at once (pixels), a guard against a tile request that would decode a whole slide
MAX_REGION_PIXELS = 64 * 2**20
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


class SlideError(ValueError):
    """A slide cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def find_slides(inputs: list[str | os.PathLike]) -> list[Path]:
    """Slide files from files and folders (searched recursively for :data:`SLIDE_SUFFIXES`), sorted, unique."""
    found: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found |= {f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SLIDE_SUFFIXES)
                      and not f.name.startswith(".")}
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"{p}: no such slide file or folder")
    return sorted(found)


def slide_id(path: str | os.PathLike) -> str:
    """The slide's name: its file name without the slide suffix (TCGA barcodes keep their dots)."""
    name = Path(path).name
    for suffix in sorted(SLIDE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


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


class TiledSlide:
    """One slide opened with tifffile: ``levels`` ``[(H, W)]``, ``mpp`` (level 0, or None), region reads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.tif = tifffile.TiffFile(self.path)
            series = self.tif.series[0]
            self.pages = [lvl.keyframe for lvl in series.levels]
        except Exception as e:  # noqa: BLE001 - not a TIFF, truncated, unsupported
            raise SlideError(self.path, f"cannot open as a tiled TIFF / SVS ({type(e).__name__}: {e})") from None
        self.levels = [(int(p.imagelength), int(p.imagewidth)) for p in self.pages]
        try:  # one tile / strip of every level must fit the size limits (monai_ext.data.limits), header only
            for i, p in enumerate(self.pages):
                rows = int(p.tilelength) if p.is_tiled else min(int(p.rowsperstrip or p.imagelength), self.levels[i][0])
                cols = int(p.tilewidth) if p.is_tiled else self.levels[i][1]
                check_size(self.path, (rows, cols, int(p.samplesperpixel)), 1, f"level {i} tile")
        except DataError as e:
            raise SlideError(self.path, e.problem) from None
        for i, p in enumerate(self.pages):
            if p.samplesperpixel < 3:
                raise SlideError(self.path, f"level {i} has {p.samplesperpixel} channel(s); an RGB slide is needed")
        self.mpp = slide_mpp(self.tif)

    def downsample(self, level: int) -> float:
        """Down-sampling factor of ``level`` relative to level 0 (the mean of both axes)."""
        (h0, w0), (h, w) = self.levels[0], self.levels[level]
        return (h0 / h + w0 / w) / 2

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB at ``level`` from (``y``, ``x``) in that level's pixels; outside the image is
        white. Only the TIFF tiles the region overlaps are decoded (stripped pages: the whole page)."""
        if h * w > MAX_REGION_PIXELS:
            raise SlideError(self.path, f"region {h}x{w} at level {level} exceeds {MAX_REGION_PIXELS} pixels")
        page = self.pages[level]
        H, W = self.levels[level]
        out = np.full((h, w, 3), 255, np.uint8)
        if not page.is_tiled:
            arr = self._page_rgb(page)
            ys, xs = slice(max(y, 0), min(y + h, H)), slice(max(x, 0), min(x + w, W))
            out[ys.start - y: ys.stop - y, xs.start - x: xs.stop - x] = arr[ys, xs]
            return out
        th, tw = int(page.tilelength), int(page.tilewidth)
        across = -(-W // tw)
        fh = self.tif.filehandle
        for ty in range(max(y, 0) // th, min(y + h, H) // th + 1):
            for tx in range(max(x, 0) // tw, min(x + w, W) // tw + 1):
                if ty * th >= H or tx * tw >= W:
                    continue
                index = ty * across + tx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                if not count:
                    continue  # an empty tile: white
                fh.seek(offset)
                data = fh.read(count)
                tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                tile = np.asarray(tile).reshape(th, tw, -1)[..., :3]
                y0, x0 = ty * th, tx * tw
                sy0, sy1 = max(y, y0), min(y + h, y0 + th, H)
                sx0, sx1 = max(x, x0), min(x + w, x0 + tw, W)
                out[sy0 - y: sy1 - y, sx0 - x: sx1 - x] = tile[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0]
        return out

    def _page_rgb(self, page: tifffile.TiffPage) -> np.ndarray:
        if page.imagelength * page.imagewidth > MAX_REGION_PIXELS:
            raise SlideError(self.path, f"untiled level of {page.imagelength}x{page.imagewidth} pixels is too large "
                                        f"to decode at once")
        arr = np.asarray(page.asarray())
        return arr.reshape(arr.shape[0], arr.shape[1], -1)[..., :3].astype(np.uint8, copy=False)

    def thumbnail_level(self, max_side: int = 4096) -> int:
        """The coarsest pyramid level (for tissue detection); callers reduce it further when it is large."""
        return len(self.levels) - 1

    def close(self) -> None:
        self.tif.close()

    def __enter__(self) -> TiledSlide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
