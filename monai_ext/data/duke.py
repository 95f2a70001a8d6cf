"""DUKE-Breast-Cancer-MRI (TCIA): per-breast subtraction volumes for cancer yes/no classification.

Real layout read by :func:`prepare` (as the TCIA downloader writes it)::

    RAW/Breast_MRI_001/<study>/<series>/1-001.dcm ...    (also RAW/<any>/Breast_MRI_001/...)
    RAW/Clinical_and_Other_Features.xlsx                   (or --clinical PATH)

Per patient (the public pipeline behind the SFN paper / ODELIA):

1. choose the pre-contrast and the first post-contrast series of the dynamic (DCE) acquisition by
   series description (vendor variants ``ax dyn pre`` / ``ax dyn 1st pass``, ``ax 3d dyn`` /
   ``Ph1/ax 3d dyn``, ``Ax Vibrant MultiPhase`` / ``Ph1/Ax Vibrant MultiPhase``,
   ``t1_fl3d_tra_dynVIEWS_spair_ pre`` / ``... 1st pass``), else by acquisition order
   (:func:`select_dce_series`);
2. read both with MONAI's DICOM readers (``PydicomReader`` by default, ``ITKReader`` as option);
3. subtraction ``post_1 - pre`` (post resampled onto the pre grid if the grids differ);
4. RAS orientation; resampling to ``spacing`` (default (0.7, 0.7, 3) mm) and crop/pad to
   ``2*size[0] x size[1] x size[2]`` voxels, done as one resampling onto that axis-aligned box
   (same result as resample-then-crop, a fraction of the cost): left-right and cranio-caudal
   centred on the image centre, antero-posterior ending just in front of the anterior-most
   tissue (``ap_crop="anterior"``, as the public code does; ``"center"`` as option); the
   default ``size`` (256, 256, 32) is the paper's;
6. split at the image centre into the patient's left and right breast;
7. resize each breast to ``out_size`` (default (64, 64, 16), small enough for CPU training: the
   same field of view at 4x coarser in-plane and 2x coarser through-plane sampling;
   ``--out-size 256 256 32`` keeps the paper's resolution);
8. write ``images/<patient>_<L|R>.nii.gz`` (float32, RAS affine).

Labels from ``Clinical_and_Other_Features.xlsx`` (three header rows; ``Patient ID``, ``Tumor
Location`` L/R, ``Bilateral Information`` 0/1/NC): a side is positive if the tumour is on it or
the cancer is bilateral; patients with ``NC`` (laterality not clear) are excluded (and listed in
``skipped.json``). The split is grouped by patient, in the paper's 834/208/260 proportions.

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.duke`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import (
    DataError,
    SkipLog,
    check_image_content,
    data_origin,
    grouped_split,
    write_datalist,
)
from monai_ext.data.dataset import Option, moved_attribute
from monai_ext.data.dicom import SeriesInfo, read_series, scan_series
from monai_ext.data.duke_volume import (
    DEFAULT_OUT_SIZE,
    DEFAULT_SPACING,
    PAPER_SIZE,
    DukeSubtractionPreprocess,
    save_nifti,
)
from monai_ext.data.runner import check_settings, run_cases

logger = logging.getLogger(__name__)

CLINICAL_NAME = "Clinical_and_Other_Features.xlsx"
PATIENT_PATTERN = re.compile(r"^Breast_MRI_\d+$")
SIDES = ("L", "R")

#: training / validation / test proportions of the paper (834/208/260 of 1302 breasts)
SPLIT_FRACTIONS = (834, 208, 260)
#: splits a usable prepared DUKE folder needs and the classes each must hold (checked by ``monai-ext prepare``)
REQUIRED_SPLITS = ("training", "validation", "test")
CLASSES = (0, 1)


# ----------------------------------------------------------------------------------------------
# series selection

#: phase of a dynamic series whose description does not say which phase it is
PHASE_UNKNOWN = -1

_NON_DCE = re.compile(
    r"(?:^|[^a-z])(loc|localizer|locator|scout|survey|cal|calibration|asset|mip|sub|subtraction|"
    r"seg|segmentation|t2|stir|dwi|adc|diffusion|tse|fse)(?:[^a-z]|$)"
)
_DCE = re.compile(r"dyn|vibrant|multiphase|multi-phase|fl3d|thrive|dce|vibe|\bpass\b")
_PH_PREFIX = re.compile(r"^ph(\d+)\s*[/_\- ]")
_PRE = re.compile(r"(?:^|[^a-z])pre(?:[^a-z]|$)|pre[-_ ]?contrast")
_ORDINAL = re.compile(r"(?:^|[^a-z0-9])(\d+)\s*(?:st|nd|rd|th)(?:[^a-z]|$)")
_ORDINAL_WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5}
_POST_N = re.compile(r"post[-_ ]?(\d+)")


def dynamic_phase(description: str) -> int | None:
    """Phase of a DCE series from its description: ``0`` pre-contrast, ``k`` the k-th
    post-contrast phase, :data:`PHASE_UNKNOWN` for a dynamic series without phase in its name
    (e.g. ``ax 3d dyn``, ``Ax Vibrant MultiPhase``), ``None`` for anything else (localizer, T2,
    non-fat-sat T1, derived subtraction, ...)."""
    d = description.strip().lower()
    if not d:
        return None
    m = _PH_PREFIX.match(d)
    if m:  # GE: "Ph1/ax 3d dyn" is the first post-contrast phase of "ax 3d dyn"
        return int(m.group(1))
    if _NON_DCE.search(d) and not _DCE.search(d):
        return None
    if _NON_DCE.search(d) and re.search(r"(?:^|[^a-z])sub(?:traction)?(?:[^a-z]|$)", d):
        return None  # derived subtraction series of a dynamic acquisition
    dynamic = bool(_DCE.search(d))
    if _PRE.search(d):
        return 0 if dynamic or "t1" in d else None
    m = _ORDINAL.search(d) or _POST_N.search(d)
    if m and (dynamic or "t1" in d or "post" in d):
        return int(m.group(1))
    for word, k in _ORDINAL_WORDS.items():
        if re.search(rf"(?:^|[^a-z]){word}(?:[^a-z]|$)", d) and dynamic:
            return k
    return PHASE_UNKNOWN if dynamic else None


def select_dce_series(series: Sequence[SeriesInfo], where: Path | str = "") -> tuple[SeriesInfo, SeriesInfo]:
    """Choose ``(pre, post_1)`` among a patient's series.

    Descriptions that name the phase win (first in acquisition order when a phase is repeated).
    A missing pre-contrast series is taken as the unnamed dynamic series acquired last before the
    first post-contrast one (GE: ``ax 3d dyn`` before ``Ph1/ax 3d dyn``), or the first unnamed
    dynamic series; a missing first post-contrast series as the next dynamic series acquired after
    the pre-contrast one, unless that one is named as a later phase (then the first post-contrast
    phase is missing and the patient is skipped).

    Raises:
        DataError: naming ``where`` and listing the series descriptions found.
    """
    phases = [(s, dynamic_phase(s.description)) for s in series]
    dyn = sorted([(s, p) for s, p in phases if p is not None], key=lambda sp: sp[0].order_key)
    found = sorted({s.description or "<no description>" for s in series})
    if not dyn:
        raise DataError(where, f"no dynamic contrast-enhanced series found; series descriptions: {found}")
    named: dict[int, SeriesInfo] = {}
    for s, p in dyn:
        if p >= 0:
            named.setdefault(p, s)
    unnamed = [s for s, p in dyn if p == PHASE_UNKNOWN]
    pre = named.get(0)
    post = named.get(1)
    if pre is None:
        before = [s for s in unnamed if post is None or s.order_key < post.order_key]
        if post is not None and before:
            pre = before[-1]
        elif unnamed:
            pre = unnamed[0]
    if pre is None:
        raise DataError(where, f"no pre-contrast series found; series descriptions: {found}")
    if post is None:
        after = [(s, p) for s, p in dyn if s is not pre and s.order_key > pre.order_key]
        if after and after[0][1] in (PHASE_UNKNOWN, 1):
            post = after[0][0]
    if post is None:
        raise DataError(
            where,
            f"no first post-contrast series found (pre-contrast: {pre.description!r}); series descriptions: {found}",
        )
    return pre, post


# ----------------------------------------------------------------------------------------------
# clinical table and labels


class Excluded(ValueError):
    """A patient excluded by the protocol (e.g. laterality not clear)."""


def find_clinical_file(raw: Path) -> Path:
    """``Clinical_and_Other_Features.xlsx`` in ``raw`` or up to two folders below it."""
    for pattern in (CLINICAL_NAME, f"*/{CLINICAL_NAME}", f"*/*/{CLINICAL_NAME}"):
        hits = sorted(Path(raw).glob(pattern))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{CLINICAL_NAME} not found in {raw} (or two levels below); pass --clinical PATH")


def read_clinical(path: Path, header_rows: int = 3) -> dict[str, dict[str, str]]:
    """``{patient_id: {"location": ..., "bilateral": ...}}`` from the clinical XLSX.

    The columns ``Patient ID``, ``Tumor Location`` and ``Bilateral Information`` are looked up by
    name in the first ``header_rows`` rows (the real sheet has three header rows: group, name,
    value coding); data start below them.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_excel(path, header=None, dtype=object, engine="openpyxl")
    except Exception as e:
        raise DataError(path, f"cannot read clinical spreadsheet ({type(e).__name__}: {e})") from e
    head = table.iloc[:header_rows]
    cols: dict[str, int] = {}
    for key, name in (("pid", "patient id"), ("location", "tumor location"), ("bilateral", "bilateral information")):
        hits = [
            j
            for j in range(table.shape[1])
            for v in head.iloc[:, j]
            if isinstance(v, str) and " ".join(v.split()).lower() == name
        ]
        if not hits:
            raise DataError(path, f"column {name!r} not found in the first {header_rows} header rows")
        cols[key] = hits[0]
    out: dict[str, dict[str, str]] = {}
    for _, row in table.iloc[header_rows:].iterrows():
        pid = _cell_text(row.iloc[cols["pid"]])
        if pid:
            out[pid] = {
                "location": _cell_text(row.iloc[cols["location"]]),
                "bilateral": _cell_text(row.iloc[cols["bilateral"]]),
            }
    return out


def _cell_text(v: Any) -> str:
    """A spreadsheet cell as text: empty for blanks, ``1`` for ``1.0``."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def side_labels(location: str, bilateral: str) -> dict[str, int]:
    """Per-breast labels: positive where the tumour is, both sides if bilateral.

    Raises:
        Excluded: laterality not clear (``NC``).
        ValueError: values that are neither.
    """
    loc, bil = location.strip().upper(), bilateral.strip().upper()
    if "NC" in (loc, bil):
        raise Excluded(f"laterality not clear (Tumor Location={location!r}, Bilateral Information={bilateral!r})")
    if bil in ("1", "YES", "Y", "TRUE"):
        both = True
    elif bil in ("0", "NO", "N", "FALSE"):
        both = False
    else:
        raise ValueError(f"unexpected Bilateral Information {bilateral!r} (expected 0, 1 or NC)")
    side = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(loc)
    if side is None and not both:
        raise ValueError(f"unexpected Tumor Location {location!r} (expected L or R)")
    return {s: int(both or s == side) for s in SIDES}


def find_patient_dirs(raw: Path) -> dict[str, Path]:
    """``{patient_id: folder}`` for ``Breast_MRI_NNN`` folders in ``raw`` or one level below."""
    found: dict[str, Path] = {}
    for pattern in ("*", "*/*"):
        for d in sorted(Path(raw).glob(pattern)):
            if d.is_dir() and PATIENT_PATTERN.match(d.name) and d.name not in found:
                found[d.name] = d
    return found


def _prepare_patient(case: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Read, preprocess and write one patient (worker function; see :func:`prepare`)."""
    series, problems = scan_series(Path(case["dir"]))
    try:
        pre_s, post_s = select_dce_series(series, where=case["dir"])
    except DataError as e:
        if problems:  # an unreadable series folder may be the one that is missing
            raise DataError(problems[0].path, f"{problems[0].problem}; {e.problem}") from e
        raise
    pre = read_series(pre_s, reader=settings["reader"])
    post = read_series(post_s, reader=settings["reader"])
    for series, volume in ((pre_s, pre), (post_s, post)):
        check_image_content(volume, _series_where(series, case["dir"]), f"series {series.description!r}")
    proc = DukeSubtractionPreprocess(
        spacing=settings["spacing"], size=settings["size"], out_size=settings["out_size"], ap_crop=settings["ap_crop"]
    )
    halves = proc(pre, post)
    for side, img in halves.items():
        check_image_content(img, case["dir"], f"{'left' if side == 'L' else 'right'} breast subtraction volume")
    for side, img in halves.items():
        save_nifti(img, Path(case["outputs"][side]))
    return {"pre": pre_s.description, "post_1": post_s.description}


def _series_where(series: SeriesInfo, fallback: str) -> str:
    """The folder of a series (for messages), else ``fallback``."""
    return str(getattr(series, "path", None) or fallback)


#: ``monai-ext prepare duke`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of("--clinical", type=Path, default=None, help=f"path of {CLINICAL_NAME} (default: found under --raw)"),
    Option.of(
        "--spacing",
        type=float,
        nargs=3,
        default=list(DEFAULT_SPACING),
        metavar=("X", "Y", "Z"),
        help="resampling voxel size in mm, RAS (default: 0.7 0.7 3)",
    ),
    Option.of(
        "--size",
        type=int,
        nargs=3,
        default=list(PAPER_SIZE),
        metavar=("X", "Y", "Z"),
        help="per-breast crop/pad in voxels at --spacing (default, the paper's: 256 256 32)",
    ),
    Option.of(
        "--out-size",
        type=int,
        nargs=3,
        default=list(DEFAULT_OUT_SIZE),
        metavar=("X", "Y", "Z"),
        help="final per-breast array shape (default 64 64 16 for CPU; 256 256 32 = paper resolution)",
    ),
    Option.of(
        "--ap-crop",
        choices=("anterior", "center"),
        default="anterior",
        help="antero-posterior crop: from the anterior-most tissue (default) or centred",
    ),
    Option.of("--reader", choices=("pydicom", "itk"), default="pydicom", help="MONAI DICOM reader"),
    Option.of("--workers", type=int, default=1, help="worker processes"),
)


def prepare(
    raw: Path,
    out: Path,
    overwrite: bool = False,
    seed: int = 0,
    clinical: Path | None = None,
    spacing: Sequence[float] = DEFAULT_SPACING,
    size: Sequence[int] = PAPER_SIZE,
    out_size: Sequence[int] | None = DEFAULT_OUT_SIZE,
    ap_crop: str = "anterior",
    reader: str = "pydicom",
    workers: int = 1,
) -> dict[str, Any]:
    """Prepare DUKE: per-breast subtraction NIfTIs in ``out/images`` + ``datalist.json`` +
    ``skipped.json`` (see the module docstring). Returns the datalist."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise FileNotFoundError(f"DUKE raw folder not found: {raw}")
    settings = {
        "spacing": [float(s) for s in spacing],
        "size": [int(s) for s in size],
        "out_size": [int(s) for s in (out_size or size)],
        "ap_crop": ap_crop,
    }
    check_settings(out, settings, overwrite)
    clinical_path = Path(clinical) if clinical else find_clinical_file(raw)
    table = read_clinical(clinical_path)
    dirs = find_patient_dirs(raw)
    skips = SkipLog()
    labels: dict[str, dict[str, int]] = {}
    todo: list[dict[str, Any]] = []
    done: list[str] = []
    for pid in sorted(set(table) | set(dirs)):
        if pid not in dirs:
            skips.add(
                pid, DataError(raw / pid, f"patient listed in {clinical_path.name} but its image folder is missing")
            )
            continue
        if pid not in table:
            skips.add(pid, DataError(clinical_path, f"no row for patient {pid}"))
            continue
        try:
            labels[pid] = side_labels(table[pid]["location"], table[pid]["bilateral"])
        except Excluded as e:
            skips.add(pid, f"excluded: {e}", path=clinical_path)
            continue
        except ValueError as e:
            skips.add(pid, DataError(clinical_path, f"patient {pid}: {e}"))
            continue
        outputs = {s: str(out / "images" / f"{pid}_{s}.nii.gz") for s in SIDES}
        if not overwrite and all(Path(p).is_file() for p in outputs.values()):
            done.append(pid)
        else:
            todo.append({"pid": pid, "dir": str(dirs[pid]), "outputs": outputs})
    if done:
        logger.info("%d patient(s) already prepared in %s (use --overwrite to redo)", len(done), out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    worker = functools.partial(_prepare_patient, settings={**settings, "reader": reader})
    for case, result, error in run_cases(worker, todo, workers=workers, desc="DUKE patients"):
        if error is not None:
            skips.add(case["pid"], error)
        else:
            logger.debug("%s: pre=%r post_1=%r", case["pid"], result["pre"], result["post_1"])
            done.append(case["pid"])
    patients = sorted(done)
    assign = grouped_split(patients, fractions=SPLIT_FRACTIONS, seed=seed)
    datalist: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for pid in patients:
        for side in SIDES:
            datalist[assign[pid]].append(
                {"image": f"images/{pid}_{side}.nii.gz", "label": labels[pid][side], "patient": pid, "side": side}
            )
    write_datalist(
        out, datalist, dataset="duke", num_classes=2, settings=settings, seed=seed, data_origin=data_origin(raw)
    )
    skips.write(out)
    return datalist


#: generator names that moved to :mod:`monai_ext.data.synthetic.duke` (still found here, with a DeprecationWarning)
_MOVED = ("synthesize", "VENDOR_STYLES", "MR_IMAGE_STORAGE")


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, "monai_ext.data.synthetic.duke", _MOVED, name)
