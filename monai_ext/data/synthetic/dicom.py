"""DICOM writing for the synthetic generators, so that they write what scanners write.

:func:`make_uid` (deterministic UIDs), :func:`new_dataset` (file meta, explicit VR little endian),
:func:`set_pixels` (uncompressed 16-bit pixel data), :func:`write_dataset` (Part-10 file), :func:`ds_decimal`.
Both pydicom 2.4 (MONAI Label's pin) and pydicom 3 are supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


def make_uid(*parts: Any) -> str:
    """A valid, deterministic DICOM UID derived from ``parts`` (pydicom's root, hashed entropy)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def new_dataset(sop_class_uid: str, sop_instance_uid: str, **elements: Any) -> Dataset:
    """A DICOM dataset with file meta information (explicit VR little endian) and ``elements``
    given as keyword names (``PatientID="x"``...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    if not _PYDICOM3:
        ds.is_little_endian = True
        ds.is_implicit_VR = False
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    for k, v in elements.items():
        setattr(ds, k, v)
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, bits_stored: int = 12, photometric: str = "MONOCHROME2") -> None:
    """Store a 2D unsigned integer array as uncompressed 16-bit pixel data."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2D pixel array, got shape {pixels.shape}")
    if pixels.min() < 0 or pixels.max() >= 2**bits_stored:
        raise ValueError(f"pixel values {pixels.min()}..{pixels.max()} do not fit {bits_stored} bits")
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def write_dataset(path: Path, ds: Dataset) -> None:
    """Write a dataset as a DICOM Part-10 file (preamble + file meta)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _PYDICOM3:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def ds_decimal(values: Sequence[float] | float, digits: int = 6) -> Any:
    """Values formatted for DS (decimal string) elements, which allow at most 16 characters."""
    if isinstance(values, (int, float, np.floating, np.integer)):
        return f"{float(values):.{digits}g}"
    return [f"{float(v):.{digits}g}" for v in values]
