"""Synthetic PAIP 2019: H&E liver slides with whole / viable tumour masks, in the real PAIP layout.

:func:`synthesize` writes ``<case>.svs`` (Aperio-style tiled JPEG pyramid, :func:`write_svs`) and the level-0 masks
``<case>_whole.tif`` / ``<case>_viable.tif`` (:func:`write_mask`) as :mod:`monai_ext.data.paip` reads them;
:func:`synth_slide` says what one slide models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from monai_ext.data.common import atomic_path, write_synthetic_marker
from monai_ext.data.dataset import Option

logger = logging.getLogger(__name__)

APERIO = "Aperio Image Library v12.0.15"
TILE = 256


def _smooth(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth unit-variance noise with features of about ``scale`` pixels."""
    gh, gw = int(np.ceil(shape[0] / scale)) + 3, int(np.ceil(shape[1] / scale)) + 3
    g = rng.normal(size=(gh, gw)).astype(np.float32)
    big = Image.fromarray(g).resize((int(np.rint(gw * scale)), int(np.rint(gh * scale))), Image.BICUBIC)
    z = np.asarray(big)[: shape[0], : shape[1]]
    return (z - z.mean()) / (z.std() + 1e-6)


def _fractal(rng, shape, scales: Sequence[float], gains: Sequence[float]) -> np.ndarray:
    """Sum of smooth noise octaves, built at a reduced grid (finest scale / 4) and up-sampled once."""
    f = max(1, int(min(scales) // 4))
    if f == 1:
        return sum(g * _smooth(rng, shape, s) for s, g in zip(scales, gains))
    small = (-(-shape[0] // f), -(-shape[1] // f))
    z = sum(g * _smooth(rng, small, s / f) for s, g in zip(scales, gains)).astype(np.float32)
    big = Image.fromarray(z).resize((small[1] * f, small[0] * f), Image.BICUBIC)
    return np.asarray(big)[: shape[0], : shape[1]]


def _nuclei(uniform: np.ndarray, low: np.ndarray, high: np.ndarray, sigma: float) -> np.ndarray:
    """Blob map in [0, 1]: nuclei of radius ~2*sigma seeded where ``low <= uniform < high``
    (``high - low``: expected nuclei per pixel; disjoint intervals share one uniform field)."""
    seeds = ((uniform >= low) & (uniform < high)).astype(np.float32)
    blobs = ndimage.gaussian_filter(seeds, sigma, truncate=3.0) * (2 * np.pi * sigma**2)
    return np.clip(blobs * 1.6, 0, 1)


def synth_slide(rng: np.random.Generator, size: int = 2048):
    """One synthetic H&E liver slide at level 0: ``(rgb (H, W, 3) uint8, whole, viable)``.

    What it models: tissue fragments (fractal outline) on white glass; normal liver (pink
    hepatocyte cytoplasm in cords, regular round nuclei, pale sinusoids, a few dense
    inflammatory clusters); one tumour whose outline is a multi-scale fractal down to ~16 px
    plus satellite nodules (fine boundary detail that coarse patches miss); inside it viable
    tumour (crowded, larger, darker, pleomorphic nuclei, bluish cytoplasm), necrosis (pale
    eosinophilic, nuclear debris) and a fibrous capsule along the border, both in the whole but
    not the viable mask. Colours follow Beer-Lambert mixing of haematoxylin and eosin optical
    densities with per-slide stain variation and JPEG-like noise. ``size``: level-0 width; the
    height is 75-100 % of it (not square, as real slides).
    """
    W = int(size)
    H = int(W - 64 * rng.integers(0, max(1, W // 256)))
    shape = (H, W)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    u, v = xx / W, yy / W  # coordinates in units of the width
    s = W / 2048  # feature scale relative to the default size

    # tissue: an ellipse-like envelope with a fractal edge, on white glass
    cx, cy = rng.uniform(0.42, 0.58), H / W * rng.uniform(0.42, 0.58)
    ax, ay = rng.uniform(0.34, 0.44), H / W * rng.uniform(0.34, 0.44)
    env = np.sqrt(((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)
    tissue = env + 0.22 * _fractal(rng, shape, (W / 3, W / 8, W / 24), (1.0, 0.5, 0.25)) < 1.0

    # tumour (whole): blob with multi-scale fractal boundary and satellite nodules
    tx, ty = cx + rng.uniform(-0.12, 0.12), cy + rng.uniform(-0.1, 0.1)
    tr = rng.uniform(0.15, 0.26)
    d = np.sqrt((u - tx) ** 2 + (v - ty) ** 2) / tr
    edge = _fractal(rng, shape, (W / 4, W / 12, W / 40, 16 * s), (0.22, 0.12, 0.07, 0.05))
    whole = d + edge < 1.0
    for _ in range(int(rng.integers(2, 6))):  # satellite nodules, evaluated in their box
        ang, rr = rng.uniform(0, 2 * np.pi), tr * rng.uniform(1.05, 1.35)
        nx, ny, nr = tx + rr * np.cos(ang), ty + rr * np.sin(ang), tr * rng.uniform(0.06, 0.15)
        r0, r1 = max(0, int((ny - 1.3 * nr) * W)), min(H, int((ny + 1.3 * nr) * W) + 1)
        c0, c1 = max(0, int((nx - 1.3 * nr) * W)), min(W, int((nx + 1.3 * nr) * W) + 1)
        if r0 < r1 and c0 < c1:
            b = (slice(r0, r1), slice(c0, c1))
            whole[b] |= np.sqrt((u[b] - nx) ** 2 + (v[b] - ny) ** 2) / nr + 0.1 * edge[b] < 1.0
    whole &= tissue
    # fibrous capsule along the border and necrotic areas inside: in "whole", not "viable"
    inner = ndimage.binary_erosion(whole, iterations=max(1, int(np.rint(10 * s))))
    deep = ndimage.binary_erosion(inner, iterations=max(1, int(np.rint(30 * s))))
    necrosis = (_fractal(rng, shape, (W / 10, W / 30), (1.0, 0.35)) > rng.uniform(0.9, 1.4)) & deep
    viable = inner & ~necrosis
    capsule = whole & ~inner

    # inflammatory clusters in normal tissue (dense small nuclei: a distractor)
    infl = (_smooth(rng, shape, 60 * s) > 2.0) & tissue & ~whole

    # stain concentrations
    fib = _fractal(rng, shape, (40 * s, 8 * s, 3), (0.5, 0.35, 0.15))
    cords = np.sin((xx * np.cos(0.7) + yy * np.sin(0.7)) / (9 * s) + 2.5 * _smooth(rng, shape, 50 * s))
    eos = np.where(tissue, 0.42 + 0.08 * fib + 0.10 * cords, 0.0)
    eos = np.where(viable, 0.24 + 0.06 * fib, eos)
    eos = np.where(necrosis & whole, 0.36 + 0.12 * fib, eos)
    eos = np.where(capsule, 0.62 + 0.12 * fib, eos)
    hem = (0.03 * tissue + 0.12 * viable).astype(np.float32)

    # nuclei densities (per pixel), modulated so that neither class has one fixed density:
    # denser normal areas and sparser (well differentiated) tumour areas overlap in range
    px = np.float32(1.0 / (s * s))
    mod = np.exp(0.35 * _smooth(rng, shape, W / 8)).astype(np.float32)
    dens_normal = np.where(tissue & ~whole & ~infl, px / 420, 0).astype(np.float32) * mod
    dens_tumour = np.where(viable, px / 170, 0).astype(np.float32) / mod
    dens_small = (
        np.where(infl, 1 / 60, 0) + np.where(capsule, 1 / 500, 0) + np.where(necrosis & whole, 1 / 250, 0)
    ).astype(np.float32) * px
    uni = rng.random(shape, dtype=np.float32)
    c1 = dens_normal
    c2 = c1 + 0.6 * dens_tumour
    c3 = c2 + 0.4 * dens_tumour
    c4 = c3 + dens_small
    nuc = 0.95 * _nuclei(uni, 0, c1, 2.2 * s)
    nuc = np.maximum(nuc, 1.25 * _nuclei(uni, c2 - 0.6 * dens_tumour, c2, 2.8 * s))
    nuc = np.maximum(nuc, 1.45 * _nuclei(uni, c2, c3, 3.8 * s))
    nuc = np.maximum(nuc, 1.1 * _nuclei(uni, c3, c4, 1.3 * s))
    hem = hem + nuc
    eos = eos * (1 - 0.5 * np.clip(nuc, 0, 1))

    # Beer-Lambert colour with per-slide stain vectors
    h_vec = np.array([0.65, 0.70, 0.29]) + rng.normal(0, 0.04, 3)
    e_vec = np.array([0.10, 0.90, 0.30]) + rng.normal(0, 0.04, 3)
    h_vec = (h_vec / np.linalg.norm(h_vec) * rng.uniform(0.9, 1.15)).astype(np.float32)
    e_vec = (e_vec / np.linalg.norm(e_vec) * rng.uniform(0.9, 1.15)).astype(np.float32)
    od = hem[..., None] * h_vec + eos.astype(np.float32)[..., None] * e_vec
    od += 0.025 + 0.012 * rng.standard_normal(shape, dtype=np.float32)[..., None]
    rgb = np.clip(255 * np.exp(-np.clip(od, 0, None)), 0, 255).astype(np.uint8)
    return rgb, whole.astype(np.uint8), viable.astype(np.uint8)


def _aperio(W: int, H: int, extra: str = "") -> str:
    return f"{APERIO} \r\n{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE}){extra}"


def write_svs(
    path: Path, level0: np.ndarray, downsamples: Sequence[int] = (4, 16), mpp: float = 0.502, quality: int = 85
) -> None:
    """Write ``level0`` (H, W, 3) uint8 as an Aperio-style SVS: tiled JPEG level 0, a stripped
    thumbnail (second page, as Aperio does), tiled JPEG lower levels for each downsample that
    leaves at least one tile, then label and macro images (Aperio's page order and subfile
    types). The ImageDescription carries Aperio's header and fields (AppMag, MPP): tifffile
    reads the file as SVS (``is_svs``; series Baseline with its levels, Thumbnail, Label, Macro)."""
    H, W = level0.shape[:2]
    name = Path(path).stem
    fields = f"|AppMag = 20|StripeWidth = 2040|ScanScope ID = SYNTH|Filename = {name}|MPP = {mpp:.4f}|Date = 01/01/19"
    img = Image.fromarray(level0)
    kw: dict[str, Any] = {"metadata": None, "photometric": "rgb"}
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}}
    tmp = atomic_path(Path(path))
    with tifffile.TiffWriter(tmp) as tw:
        tw.write(
            level0,
            tile=(TILE, TILE),
            description=_aperio(W, H, f" JPEG/RGB Q={quality}" + fields),
            subfiletype=0,
            **jpeg,
            **kw,
        )
        t = max(1, int(np.ceil(max(W, H) / 768)))
        thumb = np.asarray(img.reduce(t))
        tw.write(
            thumb,
            rowsperstrip=16,
            description=f"{APERIO} \r\n{W}x{H} -> {thumb.shape[1]}x{thumb.shape[0]} - " + fields,
            **jpeg,
            **kw,
        )
        for ds in downsamples:
            if max(W, H) // ds < TILE:
                break
            lv = np.asarray(img.reduce(ds))
            desc = _aperio(W, H, f" -> {lv.shape[1]}x{lv.shape[0]} JPEG/RGB Q={quality}")
            tw.write(lv, tile=(TILE, TILE), description=desc, subfiletype=0, **jpeg, **kw)
        label = np.full((463, 387, 3), 235, np.uint8)
        label[40:120, 30:357] = 20  # a printed bar
        tw.write(label, compression="lzw", description=f"{APERIO}\r\nlabel 387x463", subfiletype=1, **kw)
        macro = np.full((431, 1280, 3), 200, np.uint8)
        mt = np.asarray(img.resize((int(380 * W / max(W, H)), int(380 * H / max(W, H)))))
        macro[20 : 20 + mt.shape[0], 800 : 800 + mt.shape[1]] = mt
        tw.write(macro, rowsperstrip=16, description=f"{APERIO}\r\nmacro 1280x431", subfiletype=9, **jpeg, **kw)
    tmp.replace(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A level-0 mask as PAIP ships them: uint8 {0, 1}, tiled, LZW-compressed TIFF."""
    tmp = atomic_path(Path(path))
    tifffile.imwrite(
        tmp, mask.astype(np.uint8), tile=(TILE, TILE), compression="lzw", photometric="minisblack", metadata=None
    )
    tmp.replace(path)


#: largest level-0 width synthesized in memory (:func:`synth_slide`); larger slides are streamed
#: (:func:`monai_ext.data.synthetic.paip_pyramid.write_pyramidal_case`, square, tile by tile)
IN_MEMORY_MAX = 8192

#: ``monai-ext synth paip`` options (keywords of :func:`synthesize`)
SYNTH_OPTIONS = (
    Option.of(
        "--size",
        type=int,
        default=2048,
        help=f"level-0 width of each slide in pixels (default %(default)s; above {IN_MEMORY_MAX}: square slides "
        "rendered tile by tile in bounded memory)",
    ),
    Option.of("--workers", type=int, default=1, help="threads rendering tiles of streamed slides (default 1)"),
)


def synthesize(out: Path, cases: int = 12, seed: int = 0, size: int = 2048, workers: int = 1) -> None:
    """Write ``cases`` synthetic slides (``<case>.svs``, ``<case>_whole.tif``, ``<case>_viable.tif``)
    named like PAIP 2019 (``01_01_0001`` ...). Each slide is seeded by ``(seed, index)``. Slides wider than
    ``IN_MEMORY_MAX`` are square and streamed (``workers`` rendering threads)."""
    out = Path(out)
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if size < TILE:
        raise ValueError(f"size must be >= {TILE}, got {size}")
    out.mkdir(parents=True, exist_ok=True)
    if size > IN_MEMORY_MAX:
        from monai_ext.data.synthetic.paip_pyramid import write_pyramidal_case

        for i in range(1, cases + 1):
            case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            write_pyramidal_case(out, f"01_01_{i:04d}", size, case_seed, workers=workers, progress=True, overwrite=True)
        write_synthetic_marker(out, "paip", cases, seed, size=int(size), pyramidal=True)
        logger.info("synthetic PAIP: %d streamed slides, level 0 %d px a side, in %s", cases, size, out)
        return
    for i in tqdm(range(1, cases + 1), desc="paip synth", unit="slide"):
        rng = np.random.default_rng([seed, i])
        rgb, whole, viable = synth_slide(rng, size)
        case = f"01_01_{i:04d}"
        write_svs(out / f"{case}.svs", rgb)
        write_mask(out / f"{case}_whole.tif", whole)
        write_mask(out / f"{case}_viable.tif", viable)
    write_synthetic_marker(out, "paip", cases, seed, size=int(size))
    logger.info("synthetic PAIP: %d slides, level 0 width %d, in %s", cases, size, out)
