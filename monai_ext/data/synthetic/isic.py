"""Synthetic ISIC 2020: dermoscopic photographs in the challenge layout (``ISIC_2020_Training_GroundTruth.csv``,
``train/<image_name>.jpg``), several images per patient, melanoma at the real rate unless told otherwise.

Each image: skin of the patient's tone with texture, optional hairs and the dark round vignette of a dermoscope, and
one pigmented lesion drawn around the image centre. A latent malignancy score ``z`` (benign ~ N(0.3, 0.15), malignant
~ N(0.7, 0.15), clipped to [0, 1], overlapping: atypical nevi and featureless melanomas exist) sets the ABCD-like
features, each with its own noise: Asymmetry (low-order shape harmonics), Border irregularity (high-order
harmonics), Colours (1 to 5 of light / dark brown, black, blue-grey, red, white regression areas as blotches) and
Diameter. Benign lesions are mostly symmetric, round and evenly brown with a darker centre; malignant ones
asymmetric, ragged and multi-coloured. Patients carry skin tone, sex and age across their images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from monai_ext.data.common import atomic_path, write_synthetic_marker
from monai_ext.data.dataset import Option
from monai_ext.data.isic import COLUMNS, IMAGE_FOLDER, LABELS_CSV

#: malignant fraction of the ISIC 2020 training set (584 of 33,126)
REAL_MALIGNANT_FRACTION = 0.0176
#: images per patient in ISIC 2020 (33,126 / 2,056)
IMAGES_PER_PATIENT = 16.1
SITES = ("torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital")
BENIGN_DIAGNOSES = ("nevus", "unknown", "unknown", "unknown", "seborrheic keratosis", "lentigo NOS")
#: lesion colours (RGB in [0, 1]) a malignant lesion draws from, after its base brown
COLOURS = {"dark brown": (0.28, 0.16, 0.10), "black": (0.08, 0.06, 0.06), "blue-grey": (0.38, 0.42, 0.52),
           "red": (0.72, 0.30, 0.28), "white": (0.86, 0.80, 0.76)}


def synth_lesion(rng: np.random.Generator, z: float, skin: np.ndarray) -> np.ndarray:
    """A dermoscopic image ``(H, W, 3)`` uint8 of a lesion with malignancy score ``z`` on ``skin`` (RGB)."""
    import cv2
    from scipy.ndimage import gaussian_filter

    W = int(rng.integers(480, 601))
    H = int(W * rng.uniform(0.7, 0.8))
    Y, X = np.mgrid[:H, :W].astype(np.float32)
    tex = gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), rng.uniform(2, 6))
    tex /= tex.std() + 1e-6
    img = skin[None, None] * (1 + 0.04 * tex[..., None]) * rng.uniform(0.9, 1.05)
    # the lesion outline: radius over the angle, low harmonics = asymmetry, high harmonics = ragged border
    cx, cy = W / 2 + rng.normal(0, 0.04 * W), H / 2 + rng.normal(0, 0.04 * H)
    r0 = min(H, W) * (0.13 + 0.12 * z) * rng.uniform(0.8, 1.2)
    theta = np.arctan2(Y - cy, X - cx)
    radius = np.ones_like(theta)
    asym = 0.03 + 0.28 * z * rng.uniform(0.5, 1.5)
    for k in (1, 2, 3):
        radius += asym / k * rng.uniform(0.5, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    ragged = 0.006 + 0.05 * z * rng.uniform(0.5, 1.5)
    for k in range(5, 17):
        radius += ragged * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rel = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) / (r0 * np.clip(radius, 0.3, None))
    mask = np.clip((1.0 - rel) / 0.06, 0, 1)
    # pigment: base brown, darker towards the centre (strongly so for regular nevi), plus colour blotches
    brown = np.array([rng.uniform(0.45, 0.62), rng.uniform(0.30, 0.40), rng.uniform(0.20, 0.28)], np.float32)
    centre = np.clip(1 - rel, 0, 1)[..., None]
    lesion = brown * (1 - rng.uniform(0.15, 0.35) * (1 - z) * centre)
    n_colours = int(np.clip(np.round(1 + 5 * (z - 0.3) + rng.normal(0, 0.6)), 1, 5)) - 1
    names = rng.permutation(list(COLOURS))[:n_colours]
    for name in names:
        field = gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), r0 * rng.uniform(0.15, 0.35))
        inside = field[mask > 0.5]
        if inside.size == 0:
            continue
        blotch = field > np.quantile(inside, 1 - rng.uniform(0.1, 0.3))
        soft = rng.uniform(0.55, 0.9) * gaussian_filter(blotch.astype(np.float32), 3.0)[..., None]
        lesion = lesion * (1 - soft) + np.array(COLOURS[name], np.float32) * soft
    # pigment network texture inside the lesion
    net = 0.5 + 0.5 * np.sin(X / rng.uniform(3, 6)) * np.sin(Y / rng.uniform(3, 6))
    lesion = lesion * (1 - 0.08 * net[..., None])
    img = img * (1 - mask[..., None]) + lesion * mask[..., None]
    # hairs, dermoscope vignette, illumination, blur, noise
    if rng.random() < 0.35:
        hairs = np.zeros((H, W), np.float32)
        for _ in range(int(rng.integers(2, 12))):
            p0 = rng.uniform([0, 0], [W, H])
            ang = rng.uniform(0, np.pi)
            length = rng.uniform(0.3, 0.9) * W
            bend = rng.normal(0, 0.15)
            t = np.linspace(0, 1, 24)[:, None]
            d = np.stack([np.cos(ang + bend * t[:, 0]), np.sin(ang + bend * t[:, 0])], 1)
            pts = np.round(p0 + np.cumsum(d * length / 24, axis=0)).astype(np.int32)
            cv2.polylines(hairs, [pts.reshape(-1, 1, 2)], False, 1.0, 1, cv2.LINE_AA)
        img = img * (1 - 0.8 * hairs[..., None]) + 0.08 * hairs[..., None]
    if rng.random() < 0.4:
        d = np.sqrt(((X - W / 2) / (W / 2)) ** 2 + ((Y - H / 2) / (W / 2)) ** 2)
        img *= np.clip((rng.uniform(0.95, 1.15) - d) * 12, 0, 1)[..., None]
    img *= rng.uniform(0.85, 1.1) * rng.uniform(0.94, 1.06, 3).astype(np.float32)
    img = gaussian_filter(img, (rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), 0))
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def draw_label(seed: int, index: int, malignant_fraction: float) -> tuple[int, float]:
    """Label and malignancy score ``z`` of image ``index``: deterministic per ``(seed, index)``."""
    rng = np.random.default_rng([seed, index, 11])
    malignant = int(rng.random() < malignant_fraction)
    z = float(np.clip(rng.normal(0.7 if malignant else 0.3, 0.15), 0.0, 1.0))
    return malignant, z


def patients_of(cases: int, seed: int, images_per_patient: float = IMAGES_PER_PATIENT) -> list[int]:
    """Patient index of every image: patients with a geometric number of images (mean ``images_per_patient``,
    ~16 as in ISIC 2020)."""
    if images_per_patient < 1:
        raise ValueError(f"images_per_patient must be >= 1, got {images_per_patient}")
    rng = np.random.default_rng([seed, 12])
    out: list[int] = []
    p = 0
    while len(out) < cases:
        out += [p] * int(rng.geometric(1 / images_per_patient))
        p += 1
    return out[:cases]


#: ``monai-ext synth isic`` options (keywords of :func:`synthesize`)
SYNTH_OPTIONS = (
    Option.of("--malignant-fraction", type=float, default=REAL_MALIGNANT_FRACTION,
              help=f"fraction of malignant images (default: {REAL_MALIGNANT_FRACTION}, the real ISIC 2020 rate)"),
    Option.of("--images-per-patient", type=float, default=IMAGES_PER_PATIENT,
              help=f"mean images per patient (default: {IMAGES_PER_PATIENT}, as in ISIC 2020)"),
)


def synthesize(out: Path, cases: int = 160, seed: int = 0, malignant_fraction: float = REAL_MALIGNANT_FRACTION,
               images_per_patient: float = IMAGES_PER_PATIENT) -> Path:
    """Write ``cases`` images and the ground-truth CSV in the ISIC 2020 layout into ``out``; returns ``out``."""
    from PIL import Image

    if not 0.0 <= malignant_fraction <= 1.0:
        raise ValueError(f"malignant_fraction must be in [0, 1], got {malignant_fraction}")
    out = Path(out)
    (out / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    patient_of = patients_of(cases, seed, images_per_patient)
    rows = []
    for i in range(cases):
        p = patient_of[i]
        prng = np.random.default_rng([seed, p, 13])  # the patient: skin tone, sex, age
        skin = np.array([prng.uniform(0.72, 0.95), prng.uniform(0.52, 0.75), prng.uniform(0.42, 0.62)], np.float32)
        sex, age = str(prng.choice(["male", "female"])), int(prng.integers(4, 18)) * 5
        malignant, z = draw_label(seed, i, malignant_fraction)
        rng = np.random.default_rng([seed, i, 14])
        name = f"ISIC_{i + 10000:07d}"
        path = out / IMAGE_FOLDER / f"{name}.jpg"
        tmp = atomic_path(path)
        Image.fromarray(synth_lesion(rng, z, skin)).save(tmp, format="JPEG", quality=int(rng.integers(85, 96)))
        tmp.replace(path)
        diagnosis = "melanoma" if malignant else str(rng.choice(BENIGN_DIAGNOSES))
        rows.append([name, f"IP_{1000000 + 7919 * p % 8999999:07d}", sex, str(age), str(rng.choice(SITES)),
                     diagnosis, "malignant" if malignant else "benign", str(malignant)])
    csv_path = out / LABELS_CSV
    tmp = atomic_path(csv_path)
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    tmp.replace(csv_path)
    write_synthetic_marker(out, "isic", cases, seed, malignant_fraction=malignant_fraction,
                           images_per_patient=images_per_patient,
                           patients=len(set(patient_of)))
    return out
