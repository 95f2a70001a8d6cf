"""Slide files for ``monai-ext features``: finding them (:func:`find_slides`) and naming them (:func:`slide_id`).

Reading them tile by tile (:class:`TiledSlide`, :class:`SlideError`, :data:`MAX_REGION_PIXELS`) and their microns
per pixel (:func:`slide_mpp`) live in :mod:`monai_ext.data.slide` (the streaming APF planner reads slides too);
they are re-exported here under their old names.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_ext.data.slide import MAX_REGION_PIXELS, SlideError, TiledSlide, slide_mpp

__all__ = ["MAX_REGION_PIXELS", "SLIDE_SUFFIXES", "SlideError", "TiledSlide", "find_slides", "slide_id", "slide_mpp"]

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff")


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
