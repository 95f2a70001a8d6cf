"""Synthetic TCGA-NSCLC: LUAD vs LUSC where only a minority of the tissue carries the subtype.

Two kinds of output (``--kind``), both with ``labels.csv`` (``slide_id``, ``case_id``, ``label``) and slides
named by TCGA-style barcodes (``TCGA-XX-XXXX-01Z-00-DX1.<uuid>``; about one patient in six has two slides):

- ``features`` (default, for fast training demos): feature files in the layout ``monai-ext features`` writes
  (``h5_files/<slide>.h5``: ``features`` [N, D], ``coords`` [N, 2]) with sequences of ``min_tokens`` ...
  ``max_tokens`` tiles (default 2,000 ... 6,000). :func:`feature_sequence` says what a slide models: most tokens
  are non-tumour tissue shared by both subtypes (a per-slide mixture of stroma, alveoli, immune cells, ...);
  a minority (8-25 %) are tumour tiles whose features carry the subtype, mixed with a share of the other
  subtype's pattern (mixed histology); every token of a slide has the same stain / scanner offset. A slide's
  mean feature therefore says little; the tumour tiles decide. 5 % of the slides (:data:`FLIPPED`) show the
  other subtype's pattern (ambiguous or mislabelled cases), so that no model reaches an AUROC of 1.
- ``slides``: small pyramidal Aperio-style SVS files (tiled JPEG, with ``MPP``; the PAIP generator's writer) of
  H&E-like tissue on glass in which a tumour region of a minority of the tissue has the subtype's texture:
  LUAD glands (round lumens lined by nuclei), LUSC solid nests of large nuclei with pink keratin pearls.
  Run ``monai-ext features`` on them, then ``monai-ext prepare tcga``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from monai_ext.data.common import write_synthetic_marker
from monai_ext.data.dataset import Option
from monai_ext.data.synthetic.paip import _fractal, _nuclei, _smooth, write_svs
from monai_ext.data.tcga import CLASS_NAMES, LABELS_NAME
from monai_ext.data.wsi_features import feature_file, write_features

logger = logging.getLogger(__name__)

#: share of slides whose tiles show the other subtype's pattern (label noise, as ambiguous cases in real cohorts)
FLIPPED = 0.05
SITES = ("05", "35", "38", "44", "49", "50", "55", "64", "18", "21", "22", "33", "34", "39", "43", "56", "60")

SYNTH_OPTIONS = (
    Option.of("--kind", choices=["features", "slides"], default="features",
              help="feature files (fast demos, default) or SVS slides to run monai-ext features on"),
    Option.of("--min-tokens", type=int, default=2000, help="features: fewest tiles per slide (default 2000)"),
    Option.of("--max-tokens", type=int, default=6000, help="features: most tiles per slide (default 6000)"),
    Option.of("--dim", type=int, default=64, help="features: feature dimension D (default 64)"),
    Option.of("--size", type=int, default=1536, help="slides: level-0 width in pixels (default 1536)"),
)


def barcodes(rng: np.random.Generator, cases: int) -> list[tuple[str, str]]:
    """``cases`` slide ids with their patient ids; about one patient in six contributes two slides."""
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    while len(out) < cases:
        patient = f"TCGA-{rng.choice(SITES)}-{int(rng.integers(0, 36**4)):04X}"[:12]
        if patient in used:
            continue
        used.add(patient)
        for k in range(1 + int(rng.random() < 1 / 6 and len(out) + 1 < cases)):
            uuid = "-".join(f"{int(rng.integers(0, 16**n)):0{n}x}" for n in (8, 4, 4, 4, 12))
            out.append((f"{patient}-01Z-00-DX{k + 1}.{uuid}", patient))
    return out[:cases]


def _prototypes(seed: int, dim: int) -> dict[str, np.ndarray]:
    """Feature prototypes shared by the whole dataset (seeded by ``seed`` only)."""
    rng = np.random.default_rng([seed, 7001])
    unit = rng.normal(size=(2, dim))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return {"background": 1.6 * rng.normal(size=(6, dim)), "tumour": 1.6 * rng.normal(size=dim),
            "subtype": unit}


def feature_sequence(rng: np.random.Generator, label: int, n: int, protos: dict[str, np.ndarray],
                     signal: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """One slide: ``(features (n, D) float32, is_tumour (n,) bool)``.

    Non-tumour tokens: a per-slide Dirichlet mixture of 6 tissue prototypes + unit noise. Tumour tokens (a share
    of 8-25 %): the tumour prototype + ``signal`` x the subtype direction of ``label`` (10-25 % of them of the
    other subtype: mixed histology) + unit noise. All tokens: the slide's stain offset (N(0, 0.6^2) per feature).
    """
    bg, tum, sub = protos["background"], protos["tumour"], protos["subtype"]
    dim = bg.shape[1]
    frac = rng.uniform(0.08, 0.25)
    is_tum = rng.random(n) < frac
    weights = rng.dirichlet(np.ones(len(bg)))
    kind = rng.choice(len(bg), size=n, p=weights)
    x = bg[kind] + rng.normal(size=(n, dim))
    other = rng.random(n) < rng.uniform(0.10, 0.25)
    cls = np.where(other, 1 - label, label)
    x[is_tum] = tum + signal * sub[cls[is_tum]] + rng.normal(size=(int(is_tum.sum()), dim))
    x += rng.normal(0, 0.6, size=dim)
    return x.astype(np.float32), is_tum


def _grid_coords(rng: np.random.Generator, n: int, tile: int = 448) -> np.ndarray:
    """``n`` distinct tile corners (x, y) on a level-0 grid, roughly a tissue-shaped region."""
    side = int(np.ceil(np.sqrt(n * 1.3))) + 2
    cells = rng.permutation(side * side)[:n]
    return np.stack([cells % side, cells // side], axis=1).astype(np.int64) * tile


def _texture(rng: np.random.Generator, label: int, shape: tuple[int, int], s: float) -> tuple[np.ndarray, ...]:
    """Haematoxylin / eosin densities of a tumour of subtype ``label`` over ``shape``."""
    H, W = shape
    uni = rng.random(shape, dtype=np.float32)
    if label == 0:  # LUAD: glands, round white lumens ringed by nuclei
        seeds = (rng.random(shape) < 1 / (900 * s * s)).astype(np.float32)
        dist = ndimage.distance_transform_edt(seeds == 0)
        r = 9 * s
        lumen = dist < r
        ring = (dist >= r) & (dist < r + 5 * s)
        hem = 1.3 * _nuclei(uni, 0, np.where(ring, 1 / (25 * s * s), 0).astype(np.float32), 2.4 * s)
        eos = np.where(lumen, 0.02, 0.30).astype(np.float32)
    else:  # LUSC: solid sheets of large nuclei and keratin pearls
        hem = 1.4 * _nuclei(uni, 0, np.full(shape, 1 / (60 * s * s), np.float32), 3.6 * s)
        seeds = (rng.random(shape) < 1 / (5000 * s * s)).astype(np.float32)
        dist = ndimage.distance_transform_edt(seeds == 0)
        pearl = dist < 16 * s
        eos = np.where(pearl, 0.75 + 0.15 * np.cos(dist / (2.5 * s)), 0.28).astype(np.float32)
        hem = np.where(pearl, 0.05, hem)
    return hem.astype(np.float32), eos


def synth_slide(rng: np.random.Generator, label: int, size: int = 1536) -> np.ndarray:
    """One synthetic H&E lung slide ``(H, W, 3)`` uint8: tissue fragments on glass (alveolar walls, stroma,
    scattered small nuclei), and in 10-30 % of the tissue a tumour with the texture of ``label``."""
    W = int(size)
    H = int(W * rng.uniform(0.75, 1.0))
    shape = (H, W)
    s = W / 1536 * 1.0
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) / W
    env = np.sqrt(((xx - 0.5) / 0.40) ** 2 + ((yy - H / W / 2) / (0.38 * H / W)) ** 2)
    tissue = env + 0.25 * _fractal(rng, shape, (W / 3, W / 10), (1.0, 0.4)) < 1.0
    tx, ty = rng.uniform(0.35, 0.65), H / W * rng.uniform(0.35, 0.65)
    tumour = (np.sqrt((xx - tx) ** 2 + (yy - ty) ** 2) / rng.uniform(0.12, 0.2)
              + 0.15 * _fractal(rng, shape, (W / 6, W / 20), (1.0, 0.4)) < 1.0) & tissue
    alveoli = np.abs(_smooth(rng, shape, 22 * s)) < 0.35  # thin walls around air spaces
    eos = np.where(tissue, np.where(alveoli, 0.45, 0.06), 0.0).astype(np.float32)
    uni = rng.random(shape, dtype=np.float32)
    hem = 0.9 * _nuclei(uni, 0, np.where(tissue & alveoli, 1 / (500 * s * s), 0).astype(np.float32), 2.0 * s)
    t_hem, t_eos = _texture(rng, label, shape, s)
    hem = np.where(tumour, t_hem, hem)
    eos = np.where(tumour, t_eos, eos)
    h_vec = np.array([0.65, 0.70, 0.29]) + rng.normal(0, 0.04, 3)
    e_vec = np.array([0.10, 0.90, 0.30]) + rng.normal(0, 0.04, 3)
    od = hem[..., None] * h_vec.astype(np.float32) + eos[..., None] * e_vec.astype(np.float32)
    od += 0.02 + 0.01 * rng.standard_normal(shape, dtype=np.float32)[..., None]
    return np.clip(255 * np.exp(-np.clip(od, 0, None)), 0, 255).astype(np.uint8)


def synthesize(out: Path, cases: int | None = None, seed: int = 0, kind: str = "features", min_tokens: int = 2000,
               max_tokens: int = 6000, dim: int = 64, size: int = 1536, **_: Any) -> None:
    """Write ``cases`` synthetic slides (default 240 feature files, or 12 SVS slides) and ``labels.csv``."""
    if kind not in ("features", "slides"):
        raise ValueError(f"kind must be 'features' or 'slides', got {kind!r}")
    cases = (240 if kind == "features" else 12) if cases is None else int(cases)
    if cases < 2:
        raise ValueError(f"cases must be >= 2 (both subtypes), got {cases}")
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7000])
    ids = barcodes(rng, cases)
    labels_of = {p: i % 2 for i, p in enumerate(sorted({p for _, p in ids}))}  # per patient, both classes present
    protos = _prototypes(seed, dim)
    rows = []
    for i, (sid, patient) in enumerate(tqdm(ids, desc=f"synthetic TCGA-NSCLC {kind}", unit="slide")):
        label = labels_of[patient]
        srng = np.random.default_rng([seed, i, 7002])
        # 5 % of slides show the other subtype's pattern (ambiguous or mislabelled cases): no model reaches 1.0
        pattern = label if srng.random() >= FLIPPED else 1 - label
        if kind == "features":
            n = int(srng.integers(min_tokens, max_tokens + 1))
            x, _ = feature_sequence(srng, pattern, n, protos)
            write_features(feature_file(out, sid, "h5"), x, _grid_coords(srng, n),
                           {"slide": sid, "encoder": "synthetic", "patch_size": 448, "patch_level": 0})
        else:
            folder = out / f"TCGA-{CLASS_NAMES[label]}"
            folder.mkdir(exist_ok=True)
            write_svs(folder / f"{sid}.svs", synth_slide(srng, pattern, size), mpp=0.2520)
        rows.append({"slide_id": sid, "case_id": patient, "label": CLASS_NAMES[label]})
    with open(out / LABELS_NAME, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "label"])
        w.writeheader()
        w.writerows(rows)
    write_synthetic_marker(out, "tcga", cases, seed, kind=kind, min_tokens=min_tokens, max_tokens=max_tokens,
                           dim=dim, size=size)
    logger.info("synthetic TCGA-NSCLC: %d %s (%d patients) in %s", cases, kind, len(labels_of), out)
