"""Gigapixel synthetic PAIP 2019 cases, rendered procedurally tile by tile (16K-64K px a side, bounded memory).

:func:`write_pyramidal_case` writes the real PAIP layout (``<case>.svs``, ``<case>_whole.tif``,
``<case>_viable.tif``, as :mod:`monai_ext.data.synthetic.paip` does in memory for small slides) through the
streamed writer :func:`monai_ext.utils.tiff_pyramid.write_pyramid`. Every pixel is a deterministic
function of its level-0 coordinates and the seed (:class:`ProceduralSlide`), so every pyramid level shows the same
slide and the masks match the image:

* low-frequency fields: value noise on small lattices in slide-relative coordinates (units of the width),
  sampled every ``GRID`` pixels of the level and interpolated bilinearly to the pixels: the tissue outline on
  white glass, the whole-tumour field (a blob with a multi-scale fractal edge and satellite nodules), a fibrous
  capsule band and necrosis inside it (in ``whole``, not ``viable``), inflammatory clusters in normal tissue, a
  nuclear density modulation;
* nuclei: one candidate per ``CELL x CELL`` level-0 cell, its presence, position, radius and darkness from a hash
  of the cell index; present with a probability that depends on the region (sparse regular nuclei in normal
  liver, crowded large dark pleomorphic ones in viable tumour, small dense ones in inflammatory clusters) and
  drawn as anti-aliased disks of haematoxylin; at coarser levels with radius / ``2**level`` and their covered area
  (a sub-pixel nucleus darkens its pixel in proportion), past ``CELL`` pixels per level pixel by expectation;
* stroma texture (fibres, hepatocyte cords) and pixel noise: periodic tables, block-averaged per level;
* colour: Beer-Lambert mixing of haematoxylin and eosin optical densities with per-slide stain vectors.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import scipy.fft

from monai_ext.data.common import write_synthetic_marker
from monai_ext.data.synthetic.paip import APERIO
from monai_ext.utils.tiff_pyramid import write_pyramid

logger = logging.getLogger(__name__)

CELL = 16  # level-0 pixels per side of a nucleus cell (one candidate nucleus each)
GRID = 8  # level pixels between samples of the low-frequency fields
PERIOD = 512  # level-0 period of the texture / noise tables
MPP = 0.502
CAPSULE, DEEP = 0.08, 0.3  # tumour-field bands: capsule (not viable), necrosis only deeper than DEEP
#: eosin per region (glass, normal, viable, necrosis, capsule): constant, x fibre texture, x hepatocyte cords
#: (256-entry look-up tables for cv2.LUT)
_EOSIN = np.zeros((256, 3), np.float32)
_EOSIN[:5] = [[0, 0, 0], [0.42, 0.06, 0.08], [0.24, 0.06, 0], [0.36, 0.1, 0], [0.62, 0.1, 0]]
_EOSIN = np.ascontiguousarray(_EOSIN.T)  # (3, 256): constant, fibre, cords
_HAEM = np.zeros(256, np.float32)
_HAEM[:5] = [0, 0.03, 0.15, 0.03, 0.03]  # haematoxylin background per region (cytoplasm)
_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) float32 from integer arrays ``a``, ``b`` and ``salt`` (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = a.astype(np.uint64) * _M1 + b.astype(np.uint64) * _M3 + np.uint64(salt) * _M2
        z = (z ^ (z >> np.uint64(30))) * _M2
        z = (z ^ (z >> np.uint64(27))) * _M3
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


class _Octaves:
    """Sum of value-noise octaves on lattices of ``cells`` cells per slide width (smoothstep-bilinear)."""

    def __init__(self, rng: np.random.Generator, aspect: float, cells: tuple[int, ...], gains: tuple[float, ...]):
        self.cells, self.gains = cells, gains
        self.grids = [rng.normal(size=(int(math.ceil(c * aspect)) + 3, c + 3)).astype(np.float32) for c in cells]

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Values on the grid of columns ``u`` ``(1, n)`` and rows ``v`` ``(m, 1)`` (slide-width units): ``(m, n)``,
        separable, ``rows_weights @ lattice @ column_weights.T`` per octave."""
        out = np.zeros((v.shape[0], u.shape[1]), np.float32)
        for c, g, grid in zip(self.cells, self.gains, self.grids):
            out += g * (_lerp_weights(v[:, 0] * c, grid.shape[0]) @ grid @ _lerp_weights(u[0] * c, grid.shape[1]).T)
        return out


def _lerp_weights(t: np.ndarray, n: int) -> np.ndarray:
    """``(len(t), n)`` smoothstep-linear interpolation weights of lattice positions ``t``."""
    t = np.clip(t, 0, n - 2.001)
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    w = np.zeros((t.size, n), np.float32)
    rows = np.arange(t.size)
    w[rows, i] = 1 - f
    w[rows, i + 1] = f
    return w


def _periodic(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Periodic ``PERIOD x PERIOD`` unit-variance noise smoothed with a Gaussian of ``sigma`` pixels (float32 FFT)."""
    fy, fx = np.fft.fftfreq(PERIOD).astype(np.float32), np.fft.rfftfreq(PERIOD).astype(np.float32)
    gain = np.exp(np.float32(-2 * (np.pi * sigma) ** 2) * (fy[:, None] ** 2 + fx[None, :] ** 2))
    z = scipy.fft.irfft2(scipy.fft.rfft2(rng.standard_normal((PERIOD, PERIOD), dtype=np.float32)) * gain)
    return ((z - z.mean()) / (z.std() + 1e-9)).astype(np.float32)


class ProceduralSlide:
    """A synthetic H&E liver slide of level-0 ``size`` ``(H, W)``: :meth:`image` / :meth:`masks` render any
    region of any pyramid level (down-sample ``2**level``) from the seed alone."""

    def __init__(self, size: tuple[int, int], seed: int):
        self.H, self.W = int(size[0]), int(size[1])
        rng = np.random.default_rng([int(seed), 0x5A17])
        self.salt = int(rng.integers(2**62))
        a = self.H / self.W
        self.cx, self.cy = rng.uniform(0.42, 0.58), a * rng.uniform(0.42, 0.58)
        self.ax, self.ay = rng.uniform(0.34, 0.44), a * rng.uniform(0.34, 0.44)
        self.tissue_edge = _Octaves(rng, a, (3, 8, 24), (0.22, 0.11, 0.055))
        self.tx, self.ty = self.cx + rng.uniform(-0.1, 0.1), self.cy + a * rng.uniform(-0.08, 0.08)
        self.tr = rng.uniform(0.16, 0.24)
        self.tumour_edge = _Octaves(rng, a, (4, 12, 40, 96), (0.22, 0.12, 0.07, 0.04))
        ang = rng.uniform(0, 2 * np.pi, int(rng.integers(2, 6)))
        rr = self.tr * rng.uniform(1.1, 1.4, ang.size)
        self.nodules = np.stack(
            [self.tx + rr * np.cos(ang), self.ty + rr * np.sin(ang), self.tr * rng.uniform(0.08, 0.16, ang.size)], 1
        )
        self.necrosis = _Octaves(rng, a, (6, 18), (1.0, 0.35))
        self.necrosis_thr = rng.uniform(0.8, 1.2)
        self.inflammation = _Octaves(rng, a, (30,), (1.0,))
        self.mod = _Octaves(rng, a, (5,), (0.35,))
        h_vec = np.array([0.65, 0.70, 0.29]) + rng.normal(0, 0.04, 3)
        e_vec = np.array([0.10, 0.90, 0.30]) + rng.normal(0, 0.04, 3)
        self.h_vec = (h_vec / np.linalg.norm(h_vec) * rng.uniform(0.9, 1.15)).astype(np.float32)
        self.e_vec = (e_vec / np.linalg.norm(e_vec) * rng.uniform(0.9, 1.15)).astype(np.float32)
        self.stains = np.stack([self.h_vec, self.e_vec, np.ones(3, np.float32)])  # rows: haematoxylin, eosin, offset
        fib = 0.6 * _periodic(rng, 12) + 0.45 * _periodic(rng, 3) + 0.3 * _periodic(rng, 1)  # fibres, ~1-12 px
        ramp = np.arange(PERIOD, dtype=np.float32) * np.float32(2 * np.pi / PERIOD)
        phase = 24 * ramp[None, :] + 18 * ramp[:, None] + 2.5 * _periodic(rng, 40)  # hepatocyte cords, ~17 px
        self._tables0 = np.empty((PERIOD, PERIOD, 3), np.float32)  # fibres, cords, pixel noise
        self._tables0[..., 0] = fib / fib.std()
        self._tables0[..., 1] = np.sin(phase)
        self._tables0[..., 2] = rng.standard_normal((PERIOD, PERIOD), dtype=np.float32)

    # ---------------------------------------------------------------- fields (level-0 coordinates)

    def fields(self, y0: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """``(m, n, 5)`` float32 on the grid of level-0 rows ``y0`` ``(m, 1)`` and columns ``x0`` ``(1, n)``: tissue
        field, tumour field (both inside below 1), necrosis, inflammation, log-density modulation."""
        u, v = x0 / np.float32(self.W), y0 / np.float32(self.W)
        env = np.sqrt(((u - self.cx) / self.ax) ** 2 + ((v - self.cy) / self.ay) ** 2)
        tissue = env + self.tissue_edge(u, v)
        edge = self.tumour_edge(u, v)
        tum = np.sqrt((u - self.tx) ** 2 + (v - self.ty) ** 2) / self.tr
        for nx, ny, nr in self.nodules:
            tum = np.minimum(tum, np.sqrt((u - nx) ** 2 + (v - ny) ** 2) / nr)
        tum = tum + edge
        nec = self.necrosis(u, v)
        infl = self.inflammation(u, v)
        mod = self.mod(u, v)
        b = np.broadcast_shapes(tissue.shape, tum.shape)
        return np.stack([np.broadcast_to(f, b) for f in (tissue, tum, nec, infl, mod)], -1).astype(np.float32)

    def regions(self, f: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean region maps from :meth:`fields` values (``...`` leading shape)."""
        tissue = f[..., 0] < 1
        whole = tissue & (f[..., 1] < 1)
        inner = f[..., 1] < 1 - CAPSULE
        necrosis = whole & (f[..., 1] < 1 - DEEP) & (f[..., 2] > self.necrosis_thr)
        viable = whole & inner & ~necrosis
        return {
            "tissue": tissue,
            "whole": whole,
            "viable": viable,
            "necrosis": necrosis,
            "capsule": whole & ~inner,
            "inflamed": tissue & ~whole & (f[..., 3] > 1.9),
            "normal": tissue & ~whole,
        }

    def field_tile(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """:meth:`fields` at every pixel of a level region ``(h, w, 5)``: sampled every ``GRID`` pixels (one
        sample beyond each side, :meth:`coarse_fields`) and interpolated bilinearly, so neighbouring tiles join
        without seams."""
        return self.interpolate(self.coarse_fields(level, y, x, h, w), h, w)

    def coarse_fields(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The samples :meth:`field_tile` interpolates; every pixel value lies between their min and max."""
        s = 2.0**level
        ny, nx = -(-h // GRID) + 2, -(-w // GRID) + 2
        ys = ((y + (np.arange(ny) - 1) * GRID + GRID / 2) * s).astype(np.float32)
        xs = ((x + (np.arange(nx) - 1) * GRID + GRID / 2) * s).astype(np.float32)
        return self.fields(ys[:, None], xs[None, :])

    @staticmethod
    def interpolate(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
        ny, nx = coarse.shape[:2]
        fine = cv2.resize(coarse, (nx * GRID, ny * GRID), interpolation=cv2.INTER_LINEAR)
        return fine[GRID : GRID + h, GRID : GRID + w]

    # ---------------------------------------------------------------- nuclei

    def _cell_params(self, cy: np.ndarray, cx: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per cell (row ``cy``, column ``cx`` broadcast): presence, centre (level-0, in the cell), radius, darkness."""
        f = self.fields(((cy + 0.5) * CELL).astype(np.float32), ((cx + 0.5) * CELL).astype(np.float32))
        r = self.regions(f)
        dens = np.exp(f[..., 4])
        p = np.select(
            [r["viable"], r["inflamed"], r["normal"], r["necrosis"], r["capsule"]],
            [np.minimum(0.92, 0.75 / dens), 0.9, np.minimum(0.5, 0.2 * dens), 0.25, 0.1],
            0.0,
        )
        kind_t, kind_i = r["viable"], r["inflamed"] | r["necrosis"]
        h = [_hash(cy, cx, self.salt + i) for i in range(5)]
        present = h[0] < p
        rad = np.where(kind_t, 3.5 + 2.8 * h[1], np.where(kind_i, 1.6 + 0.7 * h[1], 2.5 + 0.9 * h[1]))
        dark = np.where(kind_t, 1.2 + 0.4 * h[2], np.where(kind_i, 1.1 + 0.2 * h[2], 0.85 + 0.25 * h[2]))
        span = CELL - 2 * rad - 1
        oy, ox = rad + 0.5 + span * h[3], rad + 0.5 + span * h[4]
        return present, oy.astype(np.float32), ox.astype(np.float32), rad.astype(np.float32), dark.astype(np.float32)

    def nuclei_tile(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Haematoxylin of nuclei ``(h, w)`` (covered area x darkness) for ``level`` <= log2(CELL); the region
        starts on a cell boundary (``y``, ``x`` multiples of ``CELL >> level``)."""
        s = 1 << level
        m = CELL // s  # level pixels per cell side
        ch, cw = -(-h // m), -(-w // m)
        c0y, c0x = y // m, x // m
        cy, cx = np.arange(c0y, c0y + ch)[:, None], np.arange(c0x, c0x + cw)[None, :]
        present, oy, ox, rad, dark = self._cell_params(cy, cx)
        off = ((np.arange(m) + 0.5) * s).astype(np.float32)  # level-0 offset of pixel centres in a cell
        dy = oy[:, None, :, None] - off[None, :, None, None]
        dx = ox[:, None, :, None] - off[None, None, None, :]
        R = (rad / s)[:, None, :, None]
        d = np.sqrt(dy * dy + dx * dx) / s
        cov = np.clip(R + 0.5 - d, 0, 1)
        if level > 0:  # sub-pixel nuclei: their area, in the pixel holding the centre
            small = R < 0.5
            if small.any():
                iy = np.floor(oy / s)[:, None, :, None] == np.arange(m)[None, :, None, None]
                ix = np.floor(ox / s)[:, None, :, None] == np.arange(m)[None, None, None, :]
                cov = np.where(small, np.pi * R * R * (iy & ix), cov)
        cov = cov * (present * dark)[:, None, :, None]
        return cov.reshape(ch * m, cw * m)[:h, :w]

    def _expected_nuclei(self, reg: dict[str, np.ndarray], f: np.ndarray) -> np.ndarray:
        """Mean nuclear haematoxylin per pixel (levels past ``CELL`` level-0 pixels per pixel)."""
        dens = np.exp(f[..., 4])
        area = np.pi / CELL**2
        t = np.minimum(0.92, 0.75 / dens) * (4.9**2 + 0.65) * 1.4
        n = np.minimum(0.5, 0.2 * dens) * (2.95**2 + 0.07) * 0.975
        i = 0.9 * (1.95**2 + 0.04) * 1.2
        e = 0.25 * (1.95**2 + 0.04) * 1.2
        c = 0.1 * (2.95**2 + 0.07) * 0.975
        return area * np.select(
            [reg["viable"], reg["inflamed"], reg["normal"], reg["necrosis"], reg["capsule"]], [t, i, n, e, c], 0.0
        ).astype(np.float32)

    # ---------------------------------------------------------------- rendering

    @functools.lru_cache(maxsize=16)  # noqa: B019 (one slide object per case, a handful of levels)
    def _tables(self, level: int) -> np.ndarray:
        """Texture / cords / noise tables at ``level``: level-0 tables block-averaged by ``2**level``."""
        s = 1 << level
        if s == 1:
            return self._tables0
        if s >= PERIOD:
            return self._tables0.mean((0, 1), keepdims=True)
        p = PERIOD // s
        return self._tables0.reshape(p, s, p, s, 3).mean((1, 3))

    def _texture(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        t = self._tables(level)
        p, q = y % t.shape[0], x % t.shape[1]
        if p + h <= t.shape[0] and q + w <= t.shape[1]:
            return t[p : p + h, q : q + w]
        ri, ci = np.arange(y, y + h) % t.shape[0], np.arange(x, x + w) % t.shape[1]
        return t[ri[:, None], ci[None, :]]

    def image(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of a region of ``level``."""
        coarse = self.coarse_fields(level, y, x, h, w)
        tex = self._texture(level, y, x, h, w)
        od0 = 0.025 + 0.012 * tex[..., 2]
        if coarse[..., 0].min() >= 1:  # glass only (interpolated values stay within the samples' range)
            grey = np.exp(-np.maximum(od0, 0)) * 255
            return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
        f = self.interpolate(coarse, h, w)
        reg = self.regions(f)
        # region index: 0 glass, 1 normal, 2 viable, 3 necrosis, 4 capsule; per region eosin = a + b fib + c cords
        cls = reg["tissue"].astype(np.uint8)
        cls[reg["viable"]] = 2
        cls[reg["necrosis"]] = 3
        cls[reg["capsule"]] = 4
        a, b, c = (cv2.LUT(cls, _EOSIN[i]) for i in range(3))
        eos = a + b * tex[..., 0] + c * tex[..., 1]
        if (1 << level) <= CELL:
            nuc = self.nuclei_tile(level, y, x, h, w)
        else:
            nuc = self._expected_nuclei(reg, f)
        hem = cv2.LUT(cls, _HAEM) + nuc
        eos *= 1 - 0.5 * np.minimum(nuc, 1)
        od = np.stack([hem, eos, od0], -1) @ self.stains  # (h, w, 3) optical density
        np.maximum(od, 0, out=od)
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= 255
        return od.astype(np.uint8)

    def mask(self, kind: str, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Level-0 uint8 {0, 1} ``(h, w)`` of ``kind`` (``"whole"`` or ``"viable"``)."""
        coarse = self.coarse_fields(0, y, x, h, w)
        if coarse[..., 0].min() >= 1 or coarse[..., 1].min() >= 1:  # no tumour in reach: skip interpolating
            return np.zeros((h, w), np.uint8)
        return self.regions(self.interpolate(coarse, h, w))[kind].astype(np.uint8)


def _aperio_description(case: str, W: int, H: int, tile: int, quality: int) -> str:
    return (
        f"{APERIO} \r\n{W}x{H} [0,0 {W}x{H}] ({tile}x{tile}) JPEG/RGB Q={quality}"
        f"|AppMag = 20|StripeWidth = 2040|ScanScope ID = SYNTH|Filename = {case}|MPP = {MPP:.4f}|Date = 01/01/19"
    )


def write_pyramidal_case(
    out: Path,
    case: str,
    size: int | tuple[int, int],
    seed: int,
    *,
    tile: int = 512,
    quality: int = 90,
    workers: int = 1,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one synthetic PAIP case of level-0 ``size`` (``int``: square side, or ``(H, W)``) into ``out``,
    streamed: ``<case>.svs`` (Aperio-style tiled JPEG pyramid, levels halving down to 512 px, MPP in the
    description and resolution tags), ``<case>_whole.tif`` / ``<case>_viable.tif`` (level-0 uint8 {0, 1}, tiled,
    LZW). Returns ``{"image": ..., "whole": ..., "viable": ...}``. Existing files are refused unless
    ``overwrite``; ``workers`` threads render tiles."""
    out = Path(out)
    H, W = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(H, W) < 512:
        raise ValueError(f"{out / case}: size must be at least 512 px a side, got {(H, W)}")
    paths = {"image": out / f"{case}.svs", "whole": out / f"{case}_whole.tif", "viable": out / f"{case}_viable.tif"}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    slide = ProceduralSlide((H, W), seed)
    common = {"tile": tile, "overwrite": overwrite, "workers": workers, "progress": progress}
    write_pyramid(
        paths["image"],
        (H, W),
        slide.image,
        quality=quality,
        mpp=MPP,
        description=_aperio_description(case, W, H, tile, quality),
        **common,
    )
    for kind in ("whole", "viable"):

        def render(level: int, y: int, x: int, h: int, w: int, kind: str = kind) -> np.ndarray:
            return slide.mask(kind, y, x, h, w)

        write_pyramid(paths[kind], (H, W), render, channels=1, compression="lzw", min_side=max(H, W), mpp=MPP, **common)
    write_synthetic_marker(out, "paip", len(list(out.glob("*.svs"))), seed, size=[H, W], pyramidal=True)
    logger.info("synthetic PAIP case %s: %dx%d px in %s", case, W, H, out)
    return paths
