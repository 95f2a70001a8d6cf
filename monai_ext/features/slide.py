"""Slide files for ``monai-ext features``: finding them (:func:`find_slides`).

Naming them (:func:`slide_id`, :data:`SLIDE_SUFFIXES`), reading them tile by tile (:class:`TiledSlide`,
:class:`SlideError`, :data:`MAX_REGION_PIXELS`) and their microns per pixel (:func:`slide_mpp`) live in
:mod:`monai_ext.data.slide` (the streaming APF planner reads and names slides too); they are re-exported here under
their old names.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_ext.data.slide import MAX_REGION_PIXELS, SLIDE_SUFFIXES, SlideError, TiledSlide, slide_id, slide_mpp

__all__ = ["MAX_REGION_PIXELS", "SLIDE_SUFFIXES", "SlideError", "TiledSlide", "find_slides", "slide_id", "slide_mpp"]

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
