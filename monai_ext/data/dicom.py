"""DICOM helpers shared by the DUKE (3D MR series) and VinDr-CXR (2D radiographs) paths.

Reading:

- :func:`scan_series`: find the DICOM series below a folder (one header per series folder, the
  TCIA ``<patient>/<study>/<series>/1-NNN.dcm`` layout) with the fields needed to choose one.
- :func:`read_series`: a series as a ``MetaTensor`` through MONAI's own readers
  (``PydicomReader``, or ``ITKReader``, which sorts slices by position; both apply rescale
  slope/intercept), checked to contain every file of the folder at evenly spaced positions
  (``PydicomReader`` stacks by InstanceNumber, so a series whose numbering does not follow the
  position is read with ITK); a failure is traced to the file that caused it.
- :func:`read_radiograph`: one projection radiograph as a display image in ``[0, 1]`` (modality
  LUT, then VOI LUT, then ``MONOCHROME1`` inverted, so dense structures such as bone are bright).

Writing (for the synthetic generators): :mod:`monai_ext.data.synthetic.dicom`.

Both pydicom 2.4 (MONAI Label's pin) and pydicom 3 are supported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from monai_ext.data.common import DataError
from monai_ext.data.dataset import moved_attribute
from monai_ext.data.limits import check_dicom_header

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3

#: file name endings taken as DICOM without sniffing the preamble
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")

#: header fields read when scanning series (no pixel data)
_SCAN_TAGS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "AcquisitionTime",
    "SeriesTime",
    "ContentTime",
    "Modality",
    "Rows",
    "Columns",
    "TemporalPositionIdentifier",
    "ImageType",
)


def is_dicom_file(path: Path) -> bool:
    """True for a file named like DICOM, or one carrying the ``DICM`` preamble marker."""
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        return bool(pydicom.misc.is_dicom(str(path)))
    except OSError:
        return False


def list_dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_dicom_file(p))


def _time_seconds(value: Any) -> float | None:
    """DICOM TM (``HHMMSS.FFFFFF``) as seconds after midnight, ``None`` when absent or malformed."""
    s = str(value or "").strip()
    if len(s) < 2 or not s.replace(".", "", 1).isdigit():
        return None
    hh, mm = int(s[0:2]), int(s[2:4] or 0)
    ss = float(s[4:] or 0)
    return hh * 3600 + mm * 60 + ss


@dataclass
class SeriesInfo:
    """What :func:`scan_series` knows about one series folder (from its first readable header)."""

    path: Path
    files: list[Path]
    series_uid: str = ""
    description: str = ""
    series_number: int | None = None
    acquisition_time: float | None = None  #: seconds after midnight (AcquisitionTime, else SeriesTime)
    modality: str = ""
    rows: int | None = None
    columns: int | None = None
    header: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def order_key(self) -> tuple[float, float, str]:
        """Acquisition order: time, then series number, then folder name."""
        t = self.acquisition_time if self.acquisition_time is not None else float("inf")
        n = float(self.series_number) if self.series_number is not None else float("inf")
        return (t, n, self.path.name)


def read_header(path: Path) -> Dataset:
    """The header of one DICOM file (no pixel data); :class:`DataError` naming the file if unreadable."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for damaged files
        raise DataError(path, f"unreadable DICOM header ({type(e).__name__}: {e})") from e


def scan_series(root: Path) -> tuple[list[SeriesInfo], list[DataError]]:
    """All series folders below ``root`` (recursively): one :class:`SeriesInfo` per folder holding
    DICOM files, described by its first readable header.

    Returns ``(series, problems)``: folders whose files all have unreadable headers are reported
    in ``problems`` rather than raised, so a caller can decide whether they matter.
    """
    series: list[SeriesInfo] = []
    problems: list[DataError] = []
    for folder, _dirs, _files in sorted(os.walk(root)):
        folder_p = Path(folder)
        files = list_dicom_files(folder_p)
        if not files:
            continue
        ds = None
        first_error: DataError | None = None
        for f in files:
            try:
                ds = read_header(f)
                break
            except DataError as e:
                first_error = first_error or e
        if ds is None:
            assert first_error is not None
            problems.append(first_error)
            continue
        header = {k: ds.get(k) for k in _SCAN_TAGS}
        number = header.get("SeriesNumber")
        t = _time_seconds(header.get("AcquisitionTime"))
        if t is None:
            t = _time_seconds(header.get("SeriesTime"))
        series.append(
            SeriesInfo(
                path=folder_p,
                files=files,
                series_uid=str(header.get("SeriesInstanceUID") or ""),
                description=str(header.get("SeriesDescription") or "").strip(),
                series_number=int(number) if number not in (None, "") else None,
                acquisition_time=t,
                modality=str(header.get("Modality") or ""),
                rows=int(header["Rows"]) if header.get("Rows") is not None else None,
                columns=int(header["Columns"]) if header.get("Columns") is not None else None,
                header=header,
            )
        )
    return series, problems


def _check_pixels(path: Path) -> None:
    """Decode one file's pixel data; :class:`DataError` naming the file if that fails."""
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:
        raise DataError(path, f"unreadable DICOM file, truncated or damaged ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise DataError(path, "DICOM file has no pixel data (truncated?)")
    check_dicom_header(path, ds)  # Rows x Columns x frames x samples within the limits before decoding
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise DataError(
            path, f"DICOM pixel data cannot be decoded, file truncated or damaged ({type(e).__name__}: {e})"
        ) from e
    expected = (
        int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1))
    )
    if arr.size != expected:
        raise DataError(path, f"DICOM pixel data holds {arr.size} values, header says {expected}")


def diagnose_files(files: Iterable[Path]) -> None:
    """Raise a :class:`DataError` for the first file whose header or pixel data cannot be read."""
    for f in files:
        _check_pixels(Path(f))


def _instance_order_is_spatial(files: Sequence[Path], folder: Path) -> bool:
    """True when sorting ``files`` by InstanceNumber orders them monotonically along the slice
    normal. Raises :class:`DataError` for unevenly spaced slices (missing or duplicated ones),
    which both readers would turn into a volume with a wrong geometry."""
    rows = []
    for f in files:
        try:
            ds = pydicom.dcmread(
                str(f),
                stop_before_pixels=True,
                specific_tags=["InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient"],
            )
        except Exception as e:
            raise DataError(f, f"unreadable DICOM header, file truncated or damaged ({type(e).__name__}: {e})") from e
        try:
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        except (AttributeError, TypeError, ValueError):
            return True  # no geometry: nothing to compare against
        rows.append((int(ds.get("InstanceNumber") or 0), float(ipp @ np.cross(iop[:3], iop[3:]))))
    pos = np.asarray([p for _, p in sorted(rows, key=lambda r: r[0])])
    gaps = np.diff(np.sort(pos))
    if gaps.size and (gaps.min() <= 1e-3 or gaps.max() > 1.1 * np.median(gaps)):
        raise DataError(
            folder,
            f"slice positions are not evenly spaced (steps {gaps.min():.3g}..{gaps.max():.3g} mm): "
            "duplicated or missing slices",
        )
    steps = np.diff(pos)
    return bool(np.all(steps > 0) or np.all(steps < 0))


_LOADERS: dict[str, Any] = {}


def _loader(reader: str) -> Any:
    """One ``LoadImage`` per reader kind and process (reader start-up is not free)."""
    if reader not in _LOADERS:
        from monai.data import ITKReader, PydicomReader
        from monai.transforms import LoadImage

        readers = {"itk": ITKReader, "pydicom": PydicomReader}
        if reader not in readers:
            raise ValueError(f"unknown DICOM reader {reader!r}; use 'itk' or 'pydicom'")
        _LOADERS[reader] = LoadImage(reader=readers[reader](), image_only=True)
    return _LOADERS[reader]


def read_series(series: SeriesInfo | Path, reader: str = "pydicom") -> Any:
    """Read one DICOM series folder as a 3D ``MetaTensor`` (no channel axis, RAS affine).

    Args:
        series: a :class:`SeriesInfo` or the series folder.
        reader: ``"itk"`` (``monai.data.ITKReader``) or ``"pydicom"`` (``monai.data.PydicomReader``).

    Raises:
        DataError: naming the damaged file when one file cannot be read, or the folder when the
            series as a whole is inconsistent (e.g. fewer slices read than files present).
    """
    folder = series.path if isinstance(series, SeriesInfo) else Path(series)
    files = series.files if isinstance(series, SeriesInfo) else list_dicom_files(folder)
    if not files:
        raise DataError(folder, "no DICOM files in series folder")
    if len(files) > 1 and not _instance_order_is_spatial(files, folder) and reader == "pydicom":
        # MONAI's PydicomReader stacks slices by InstanceNumber; ITK sorts them by position
        logger.info("%s: InstanceNumber does not follow slice position; reading with ITK", folder)
        reader = "itk"
    check_dicom_header(files[0], n_files=len(files))  # the stacked series within the limits before decoding
    loader = _loader(reader)
    try:
        img = loader(str(folder))
    except Exception as e:
        diagnose_files(files)  # raises naming the damaged file if there is one
        raise DataError(folder, f"cannot read DICOM series ({type(e).__name__}: {e})") from e
    if img.ndim == 2:  # a single-slice series
        img = img[..., None]
    if img.ndim != 3:
        raise DataError(folder, f"expected a 3D series, got an array of shape {tuple(img.shape)}")
    if img.shape[-1] != len(files):
        # ITK leaves out files it cannot parse; never return a volume with silently missing slices
        diagnose_files(files)
        raise DataError(
            folder,
            f"series read with {img.shape[-1]} slices but the folder holds {len(files)} DICOM files "
            "(several series or several temporal phases in one folder?)",
        )
    return img


# ----------------------------------------------------------------------------------------------
# radiographs


def read_radiograph(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a projection radiograph as a float32 display image in ``[0, 1]`` (shape ``(H, W)``).

    Modality LUT (rescale slope/intercept or LUT sequence), then VOI LUT (window or LUT
    sequence; pydicom's ``apply_voi_lut``) and min-max scaling, or without a VOI LUT the
    0.5-99.5 percentile range; then for ``MONOCHROME1`` inversion, so that in the result high
    values are dense (bone, mediastinum) and low values are air.

    Returns ``(image, meta)`` with ``meta`` holding the photometric interpretation, original
    shape and pixel spacing.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:
        raise DataError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise DataError(path, "DICOM file has no pixel data")
    check_dicom_header(path, ds)  # Rows x Columns x frames x samples within the limits before decoding
    try:
        raw = ds.pixel_array
    except Exception as e:
        raise DataError(
            path, f"DICOM pixel data cannot be decoded, file truncated or damaged ({type(e).__name__}: {e})"
        ) from e
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            path, f"expected a grey-scale radiograph (MONOCHROME1/2), got PhotometricInterpretation {photometric!r}"
        )
    if raw.ndim != 2:
        raise DataError(path, f"expected one 2D frame, got pixel array of shape {raw.shape}")
    arr = apply_modality_lut(raw, ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    arr = np.asarray(apply_voi_lut(arr, ds, index=0) if has_voi else arr, dtype=np.float32)
    if has_voi:
        lo, hi = float(arr.min()), float(arr.max())
    else:  # no display window stored: robust range, so that a few outlier pixels do not rule
        lo, hi = (
            float(v)
            for v in np.percentile(arr[:: max(1, arr.shape[0] // 512), :: max(1, arr.shape[1] // 512)], [0.5, 99.5])
        )
        arr = np.clip(arr, lo, hi)
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        raise DataError(path, f"radiograph has no contrast after modality/VOI LUT (values {lo}..{hi})")
    arr = (arr - lo) / (hi - lo)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    meta = {
        "photometric": photometric,
        "shape": tuple(int(s) for s in arr.shape),
        "spacing": tuple(float(s) for s in spacing) if spacing else None,
    }
    return arr, meta


#: writers that moved to :mod:`monai_ext.data.synthetic.dicom` (still found here, with a DeprecationWarning)
_MOVED = ("make_uid", "new_dataset", "set_pixels", "write_dataset", "ds_decimal")


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, "monai_ext.data.synthetic.dicom", _MOVED, name)
