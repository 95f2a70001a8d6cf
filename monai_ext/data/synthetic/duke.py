"""Synthetic DUKE-Breast-Cancer-MRI: DCE-MRI studies and the clinical table, in the TCIA layout.

:func:`synthesize` writes what :mod:`monai_ext.data.duke` reads: DCE series in several vendor naming styles
(:data:`VENDOR_STYLES`), localizer and non-fat-sat T1 distractors, and an enhancing lesion in one (sometimes both)
breasts among enhancing benign foci and background parenchymal enhancement; ``Clinical_and_Other_Features.xlsx``
with the real sheet's header rows.
"""

from __future__ import annotations

import datetime
import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import atomic_path, write_synthetic_marker
from monai_ext.data.duke import CLINICAL_NAME, SIDES
from monai_ext.data.synthetic.dicom import ds_decimal, make_uid, new_dataset, set_pixels, write_dataset

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

#: (pre, post_1, post_2, ...) description styles seen in DUKE, with the scanner maker
VENDOR_STYLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GE MEDICAL SYSTEMS", ("ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass")),
    ("GE MEDICAL SYSTEMS", ("ax 3d dyn", "Ph1/ax 3d dyn", "Ph2/ax 3d dyn", "Ph3/ax 3d dyn")),
    ("GE MEDICAL SYSTEMS", ("Ax Vibrant MultiPhase", "Ph1/Ax Vibrant MultiPhase", "Ph2/Ax Vibrant MultiPhase")),
    (
        "SIEMENS",
        (
            "t1_fl3d_tra_dynVIEWS_spair_ pre",
            "t1_fl3d_tra_dynVIEWS_spair 1st pass",
            "t1_fl3d_tra_dynVIEWS_spair 2nd pass",
        ),
    ),
    # no phase in the names: only the acquisition order tells pre from post
    ("GE MEDICAL SYSTEMS", ("ax dyn", "ax dyn", "ax dyn")),
)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-6)


def _synth_patient(rng: np.random.Generator, lesion_sides: Sequence[str]) -> dict[str, Any]:
    """Pre/post volumes (z, y, x) in LPS (x to the patient's left, y posterior) with geometry."""
    cols = 128
    rows = int(rng.choice([112, 128]))
    px = float(rng.uniform(2.5, 2.8))
    thk = float(rng.choice([3.5, 4.0, 4.5]))
    nz = int(np.rint(120 / thk))
    x = (np.arange(cols) - (cols - 1) / 2) * px + rng.uniform(-5, 5)
    y = (np.arange(rows) - (rows - 1) / 2) * px + rng.uniform(-5, 5)
    z = (np.arange(nz) - (nz - 1) / 2) * thk + rng.uniform(-5, 5)
    Z, Y, X = np.meshgrid(z.astype(np.float32), y.astype(np.float32), x.astype(np.float32), indexing="ij")
    # thorax: ellipse behind the chest wall; lungs and heart inside
    a, b = rng.uniform(135, 155), rng.uniform(85, 100)
    wall_y = rng.uniform(-35, -20)  # anterior surface of the thorax
    cy = wall_y + b
    body = ((X / a) ** 2 + ((Y - cy) / b) ** 2) <= 1
    lungs = (((np.abs(X) - 0.5 * a) / (0.35 * a)) ** 2 + ((Y - cy - 10) / (0.7 * b)) ** 2) <= 1
    heart = (((X - 15) / (0.3 * a)) ** 2 + ((Y - cy + 0.25 * b) / (0.45 * b)) ** 2 + (Z / 80) ** 2) <= 1
    muscle = body & (Y < wall_y + 18)
    # breasts: half-ellipsoids in front of the chest wall
    breast = np.zeros_like(body)
    centres = {}
    for side, sgn in (("L", 1.0), ("R", -1.0)):  # LPS: +x is the patient's left
        bx = sgn * rng.uniform(70, 90)
        rx, rz, depth = rng.uniform(50, 65), rng.uniform(45, 60), rng.uniform(55, 85)
        bz = rng.uniform(-8, 8)
        e = ((X - bx) / rx) ** 2 + ((Y - wall_y) / depth) ** 2 + ((Z - bz) / rz) ** 2
        breast |= (e <= 1) & (Y <= wall_y)
        centres[side] = (bx, wall_y - 0.4 * depth, bz, rx, depth, rz)
    fgt_field = _smooth_noise(rng, X.shape, sigma=(1.0, 3.0, 3.0))
    density = rng.uniform(-0.3, 0.8)
    fgt = breast & (fgt_field > density)
    pre = np.full(X.shape, 0.0, np.float32)
    pre[body] = 150
    pre[lungs & body] = 25
    pre[heart & body & ~lungs] = 170
    pre[muscle & ~lungs] = 230
    pre[breast] = 80  # fat, suppressed
    pre[fgt] = 180
    post = pre.copy()
    post[heart & body & ~lungs] *= rng.uniform(1.8, 2.4)  # blood pool
    post[muscle & ~lungs] *= rng.uniform(1.1, 1.2)
    bpe_field = 0.5 + 0.5 * _smooth_noise(rng, X.shape, sigma=(2.0, 6.0, 6.0))
    for _side, sgn in (("L", 1.0), ("R", -1.0)):  # background parenchymal enhancement per side
        side_fgt = fgt & (np.sign(X) == sgn)
        post[side_fgt] *= 1 + rng.uniform(0.05, 0.35) * np.clip(bpe_field[side_fgt], 0, 2)

    def blob(c: tuple[float, float, float], r: float, lobes: float) -> np.ndarray:
        d = np.sqrt(((X - c[0]) / r) ** 2 + ((Y - c[1]) / r) ** 2 + ((Z - c[2]) / max(r, 0.8 * thk)) ** 2)
        return d <= 1 + lobes * np.clip(fgt_field, -2, 2) * 0.25

    def inside_point(side: str, r: float) -> tuple[float, float, float]:
        bx, by, bz, rx, depth, rz = centres[side]
        return (
            bx + rng.uniform(-0.45, 0.45) * rx,
            by + rng.uniform(-0.25, 0.25) * depth,
            bz + rng.uniform(-0.4, 0.4) * rz,
        )

    lesions = []
    for side in lesion_sides:  # the cancer: strongly enhancing, irregular
        r = float(rng.uniform(4, 14))
        c = inside_point(side, r)
        m = blob(c, r, lobes=rng.uniform(0.5, 1.5)) & (breast | muscle)
        pre[m] = 190
        enh = rng.uniform(0.5, 1.4)
        if rng.random() < 0.3:  # rim enhancement
            core = blob(c, 0.6 * r, lobes=0.0)
            post[m] = 190 * (1 + enh)
            post[m & core] = 190 * (1 + 0.3 * enh)
        else:
            post[m] = 190 * (1 + enh)
        lesions.append((side, c, r))
    for side in SIDES:  # benign enhancing foci in either breast
        for _ in range(int(rng.poisson(1.2))):
            r = float(rng.uniform(2.5, 5.5))
            m = blob(inside_point(side, r), r, lobes=0.3) & breast
            post[m] = np.maximum(post[m], 180 * (1 + rng.uniform(0.2, 0.8)))
    if rng.random() < 0.3:  # patient motion between pre and post
        post = np.roll(post, shift=(0, int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1, 2))
    sigma = float(rng.uniform(4, 10))
    noisy = []
    for v in (pre, post):
        n1 = rng.standard_normal(v.shape, dtype=np.float32) * sigma
        n2 = rng.standard_normal(v.shape, dtype=np.float32) * sigma
        noisy.append(np.sqrt((v + n1) ** 2 + n2**2))  # Rician magnitude noise
    return {
        "pre": noisy[0],
        "post": noisy[1],
        "px": px,
        "thk": thk,
        "origin": (float(x[0]), float(y[0])),
        "z": z,
        "lesions": lesions,
        "distractor": np.where(breast, 300.0, pre * 1.2).astype(np.float32),  # non-fat-sat T1
    }


def synthesize(out: Path, cases: int = 24, seed: int = 0) -> None:
    """Write a synthetic DUKE dataset in the TCIA layout (see :mod:`monai_ext.data.duke`).

    Per patient: localizer (30 %), non-fat-sat T1 (50 %), and a DCE series set (pre + 1-2
    post-contrast phases) in one of :data:`VENDOR_STYLES`; cancer on one side (10%: both; 15% of
    patients ``NC`` in the table). Deterministic for ``(seed, patient index)``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table_rows = []

    for i in tqdm(range(1, cases + 1), desc="synthetic DUKE", unit="patient"):
        rng = np.random.default_rng([seed, i, 922])
        pid = f"Breast_MRI_{i:03d}"
        location = str(rng.choice(["L", "R"]))
        u = rng.random()
        bilateral = "1" if u < 0.10 else ("NC" if u < 0.25 else "0")
        sides = list(SIDES) if bilateral == "1" else [location]
        vol = _synth_patient(rng, sides)
        maker, names = VENDOR_STYLES[int(rng.integers(len(VENDOR_STYLES)))]
        n_post = int(rng.integers(1, 3))  # first and sometimes second post-contrast phase
        study_uid = make_uid(seed, pid, "study")
        for_uid = make_uid(seed, pid, "frame")
        study_dir = out / pid / f"01-01-1990-NA-MRI BREAST BILATERAL WWO-{int(rng.integers(10000, 99999))}"
        base_time = 8 * 3600 + int(rng.integers(0, 8 * 3600))
        slope, intercept = (1.0, 0.0) if rng.random() < 0.6 else (float(rng.choice([0.5, 1.5, 2.0])), 0.0)
        z = vol["z"]
        series: list[tuple[str, np.ndarray, np.ndarray]] = []
        if rng.random() < 0.3:
            idx = np.array([len(z) // 4, len(z) // 2, 3 * len(z) // 4])
            series.append(("3 Plane Loc", vol["distractor"][idx], z[idx]))
        if rng.random() < 0.5:
            series.append(("ax t1", vol["distractor"], z))
        series.append((names[0], vol["pre"], z))
        for k in range(1, n_post + 1):  # later phases: contrast washing in further
            wash = 1.0 + 0.04 * (k - 1)
            series.append((names[k], vol["pre"] + (vol["post"] - vol["pre"]) * wash, z))
        for number, (desc, data, zs) in enumerate(series, start=1):
            _write_mr_series(
                study_dir,
                pid,
                seed,
                desc,
                number,
                data,
                zs,
                vol,
                maker,
                study_uid,
                for_uid,
                acq_seconds=base_time + 90 * number,
                slope=slope,
                intercept=intercept,
                reverse=bool(rng.random() < 0.3),
            )
        table_rows.append((pid, int(rng.integers(1, 60)), maker, location, bilateral))
    _write_clinical_xlsx(out / CLINICAL_NAME, table_rows)
    (out / "README.txt").write_text(
        f"Synthetic DUKE-Breast-Cancer-MRI layout written by monai_ext (seed {seed}, {cases} patients).\n"
        "Not patient data. Prepare with: monai-ext prepare duke --raw THIS_FOLDER --out OUT\n"
    )
    write_synthetic_marker(out, "duke", cases, seed)


def _write_mr_series(
    study_dir: Path,
    pid: str,
    seed: int,
    desc: str,
    number: int,
    data: np.ndarray,
    z: np.ndarray,
    vol: dict[str, Any],
    maker: str,
    study_uid: str,
    for_uid: str,
    acq_seconds: int,
    slope: float,
    intercept: float,
    reverse: bool,
) -> None:
    series_uid = make_uid(seed, pid, "series", number)
    folder = study_dir / f"{number}.000000-{re.sub(r'[^A-Za-z0-9 _-]', '', desc)}-{int(series_uid[-5:]):05d}"
    nz = data.shape[0]
    stored = np.clip(np.round((data - intercept) / slope), 0, 4095).astype(np.uint16)
    hh, mm, ss = acq_seconds // 3600, (acq_seconds // 60) % 60, acq_seconds % 60
    tm = f"{hh:02d}{mm:02d}{ss:02d}"
    order = list(range(nz))[::-1] if reverse else list(range(nz))
    ds = new_dataset(
        MR_IMAGE_STORAGE,
        make_uid(seed, pid, "sop", number, -1),
        PatientID=pid,
        PatientName=pid,
        PatientSex="F",
        StudyInstanceUID=study_uid,
        SeriesInstanceUID=series_uid,
        FrameOfReferenceUID=for_uid,
        Modality="MR",
        Manufacturer=maker,
        SeriesDescription=desc,
        SeriesNumber=number,
        InstanceNumber=1,
        StudyDate="19900101",
        SeriesDate="19900101",
        AcquisitionTime=tm,
        SeriesTime=tm,
        ImageType=["ORIGINAL", "PRIMARY", "OTHER"],
        ScanningSequence="GR",
        SequenceVariant="SP",
        MRAcquisitionType="3D",
        MagneticFieldStrength="1.5" if maker.startswith("GE") else "3",
        PixelSpacing=ds_decimal([vol["px"], vol["px"]]),
        SliceThickness=ds_decimal(vol["thk"]),
        SpacingBetweenSlices=ds_decimal(vol["thk"]),
        ImageOrientationPatient=["1", "0", "0", "0", "1", "0"],
        ImagePositionPatient=ds_decimal([0.0, 0.0, 0.0]),
        SliceLocation="0",
        RescaleSlope=ds_decimal(slope),
        RescaleIntercept=ds_decimal(intercept),
        RescaleType="US",
        WindowCenter="400",
        WindowWidth="800",
        PatientPosition="FFP",
    )
    for inst, k in enumerate(order, start=1):  # one header, per-slice fields updated
        sop = make_uid(seed, pid, "sop", number, k)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = ds_decimal([vol["origin"][0], vol["origin"][1], float(z[k])])
        ds.SliceLocation = ds_decimal(float(z[k]))
        set_pixels(ds, stored[k], bits_stored=12)
        write_dataset(folder / f"1-{inst:03d}.dcm", ds)


def _write_clinical_xlsx(path: Path, rows: Sequence[tuple[str, int, str, str, str]]) -> None:
    """The clinical table with the real sheet's three header rows (group, name, value coding)."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Data"
    ws.append(
        [
            "Patient Information",
            "Patient Information",
            "MRI Technical Information",
            "Tumor Characteristics",
            "Tumor Characteristics",
        ]
    )
    ws.append(
        [
            "Patient ID",
            "Days to MRI (From the Date of Diagnosis)",
            "Manufacturer",
            "Tumor Location",
            "Bilateral Information",
        ]
    )
    ws.append([None, None, None, "{L = left, R = right}", "{0 = no, 1 = yes, NC = not clear}"])
    for pid, days, maker, location, bilateral in rows:
        ws.append([pid, days, maker, location, int(bilateral) if bilateral in ("0", "1") else bilateral])
    fixed = datetime.datetime(2021, 1, 1)
    wb.properties.created = fixed
    buf = io.BytesIO()
    wb.save(buf)
    tmp = atomic_path(path)
    tmp.write_bytes(_at_fixed_time(buf.getvalue(), fixed))
    tmp.replace(path)


def _at_fixed_time(xlsx: bytes, stamp: datetime.datetime) -> bytes:
    """``xlsx`` with every save-time stamp set to ``stamp``: openpyxl writes the current time into
    ``dcterms:modified`` and each zip entry whatever the workbook says, so two runs would differ."""
    iso = stamp.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "docProps/core.xml":
                body = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)", rb"\g<1>" + iso + rb"\g<2>", body
                )
            entry = zipfile.ZipInfo(info.filename, date_time=stamp.timetuple()[:6])
            entry.external_attr = info.external_attr
            dst.writestr(entry, body, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()
