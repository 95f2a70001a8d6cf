"""Size limits checked from file headers before any image, volume or slide is decoded.

An image file is untrusted input (see ``docs/security.md``): a 53-byte NIfTI can declare 1500^3 voxels and a
few-MB TIFF 46341^2 pixels, and decoding them allocates many GiB. Every reader in ``monai_ext.data`` and the
bundles' dataset checks (``monai_ext.workflows.checks``) first read the header here and raise
:class:`~monai_ext.data.common.DataError` naming the file when the array they would decode exceeds

- ``max_pixels`` elements per decoded array (voxels x samples), default 2^32 (a 65536 x 65536 RGB plane
  or a 1625^3 volume), and
- ``max_bytes`` bytes per decoded array (in the type the reader produces), default 8 GiB.

Real data stays far below both: a 512 x 512 x 1000 CT is 1 GiB as float32, an 8192 px PAIP level 0.2 GiB.
A whole-slide image is checked per decoded level, so a 100K x 100K level 0 is fine as long as the level that
is read fits (PAIP preparation reads a level of at most a few thousand pixels per side). A 1500^3 float CT
(13.5 GB) is not real data and is refused.

The limits come from ``MONAI_EXT_MAX_PIXELS`` / ``MONAI_EXT_MAX_BYTES`` (set by ``monai-ext prepare
--max-pixels / --max-bytes``, inherited by worker processes) or the defaults. Pillow's own
decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) stays on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_ext.data.common import DataError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SizeLimitError",
    "check_dicom_header",
    "check_image_header",
    "check_nifti_header",
    "check_size",
    "check_tiff_header",
    "limits",
    "set_limits",
]

DEFAULT_MAX_PIXELS = 2**32
DEFAULT_MAX_BYTES = 8 * 2**30
ENV_PIXELS = "MONAI_EXT_MAX_PIXELS"
ENV_BYTES = "MONAI_EXT_MAX_BYTES"


class SizeLimitError(DataError):
    """A header declares an array beyond the size limits (a :class:`DataError` naming the file)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive number")
    return value


def limits() -> tuple[int, int]:
    """``(max_pixels, max_bytes)`` in force (environment, else defaults)."""
    return _env_int(ENV_PIXELS, DEFAULT_MAX_PIXELS), _env_int(ENV_BYTES, DEFAULT_MAX_BYTES)


def set_limits(max_pixels: int | None = None, max_bytes: int | None = None) -> None:
    """Set the limits for this process and the worker processes it starts (``None`` keeps the current)."""
    for name, value in ((ENV_PIXELS, max_pixels), (ENV_BYTES, max_bytes)):
        if value is None:
            continue
        if int(value) <= 0:
            raise ValueError(f"{name}: expected a positive number, got {value}")
        os.environ[name] = str(int(value))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_size(path: str | os.PathLike, shape: Sequence[int], itemsize: int, what: str = "image") -> None:
    """Raise :class:`DataError` naming ``path`` when an array of ``shape`` and ``itemsize`` bytes per element
    exceeds the limits, or when ``shape`` is not a valid size (negative / empty)."""
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise DataError(path, f"{what} header declares an invalid size {shape}")
    max_pixels, max_bytes = limits()
    n = math.prod(shape)
    nbytes = n * int(itemsize)
    if n > max_pixels or nbytes > max_bytes:
        raise SizeLimitError(
            path,
            f"{what} header declares {'x'.join(map(str, shape))} = {n:,} elements ({_fmt_bytes(nbytes)} "
            f"decoded), above the limit of {max_pixels:,} elements / {_fmt_bytes(max_bytes)}; not decoded. "
            f"Raise --max-pixels / --max-bytes (or {ENV_PIXELS} / {ENV_BYTES}) if the file is genuine",
        )


def check_nifti_header(path: str | os.PathLike, out_itemsize: int = 4) -> tuple[int, ...]:
    """Shape of a NIfTI file from its header (nibabel reads no voxels); the decoded array, in the stored type
    or as ``out_itemsize``-byte values, whichever is larger, must fit the limits. Returns the shape."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.header.get_data_shape())
        stored = np.dtype(img.header.get_data_dtype()).itemsize
    except Exception as e:
        raise DataError(path, f"cannot read NIfTI header ({type(e).__name__}: {e})") from e
    check_size(path, shape, max(stored, out_itemsize), "NIfTI")
    return shape


def check_image_header(path: str | os.PathLike, out_itemsize: int = 1) -> tuple[int, int]:
    """``(height, width)`` of a PNG / JPEG / other Pillow image from its header only (``Image.open`` decodes
    nothing); Pillow's decompression-bomb guard stays on and is reported as a :class:`DataError`."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            mode = im.mode
    except Image.DecompressionBombError as e:
        raise SizeLimitError(
            path, f"image header declares too many pixels (Pillow's decompression-bomb guard: {e})"
        ) from e
    except Exception as e:
        raise DataError(path, f"cannot read image header ({type(e).__name__}: {e})") from e
    per_band = 2 if mode.startswith("I;16") else (4 if mode in ("I", "F") else 1)
    check_size(path, (h, w, bands), max(per_band, out_itemsize), "image")
    return h, w


def check_tiff_header(
    path: str | os.PathLike, page: int = 0, out_itemsize: int | None = None, whole_page: bool = True
) -> tuple[int, ...]:
    """Shape of page ``page`` of a TIFF from its header (tifffile reads no pixels); one of its tiles or strips
    (what segment-wise readers decode at a time) and, with ``whole_page``, the page itself must fit the limits.
    Returns the shape."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pg = tif.pages[page]
            shape = tuple(int(s) for s in pg.shape)
            itemsize = np.dtype(pg.dtype).itemsize if pg.dtype is not None else 1
            if pg.is_tiled:
                segment = (int(pg.tilelength), int(pg.tilewidth), int(pg.samplesperpixel))
            else:
                segment = (
                    min(int(pg.rowsperstrip or pg.imagelength), int(pg.imagelength)),
                    int(pg.imagewidth),
                    int(pg.samplesperpixel),
                )
    except Exception as e:
        raise DataError(path, f"cannot read TIFF header ({type(e).__name__}: {e})") from e
    size = max(itemsize, out_itemsize or 0)
    check_size(path, segment, size, f"TIFF page {page} tile/strip")
    if whole_page:
        check_size(path, shape, size, f"TIFF page {page}")
    return shape


def check_dicom_header(
    path: str | os.PathLike, ds: Any = None, n_files: int = 1, out_itemsize: int = 4
) -> tuple[int, ...]:
    """``(frames, rows, columns, samples)`` of a DICOM file from its header (``ds`` read with
    ``stop_before_pixels=True`` when not given), times ``n_files`` for a series of such files: the decoded
    pixels (``BitsAllocated`` or ``out_itemsize`` bytes per value, whichever is larger) must fit the limits."""
    import pydicom

    if ds is None:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:
            raise DataError(path, f"unreadable DICOM header ({type(e).__name__}: {e})") from e
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 16)
    except (TypeError, ValueError) as e:
        raise DataError(path, f"DICOM header has a non-numeric size field ({e})") from e
    shape = (frames * int(n_files), rows, cols, samples)
    check_size(path, shape, max((bits + 7) // 8, out_itemsize), "DICOM" if n_files == 1 else "DICOM series")
    return shape
