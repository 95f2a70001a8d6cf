"""PAIP 2019 liver-cancer whole-slide images: the real layout and its preparation.

Real layout (one folder, or one sub-folder per case; found recursively)::

    <raw>/.../01_01_0083.svs          Aperio SVS, tiled JPEG pyramid (level 0 ~ 40k x 50k px)
    <raw>/.../01_01_0083_whole.tif    uint8 {0, 1}, level-0 size: whole tumour area
    <raw>/.../01_01_0083_viable.tif   uint8 {0, 1}, level-0 size: viable tumour (inside whole)

:func:`prepare` reads each slide through MONAI's :class:`monai.data.WSIReader` (backend
``tifffile`` by default; ``cucim``/``openslide`` when installed) at one pyramid level (by
default the coarsest level still at least as large as the largest requested resolution),
pads it to a square with white (bottom/right, so that output pixel ``p`` is level-0 pixel
``p * S0 / R`` with ``S0 = max(H0, W0)``), and scales it to each square resolution ``R``
(default 512 and 1024; powers of two in 512 ... 8192). The masks are read with ``tifffile``
tile by tile (or strip by strip), never whole: each output pixel gets the exact fraction of
mask pixels in its level-0 footprint (area down-scaling; the padding counts as background),
thresholded at one half. Written per resolution ``R``::

    <out>/<R>/images/<case>.png               RGB uint8
    <out>/<R>/labels/<case>_viable.png        uint8 {0, 1}: the segmentation target
    <out>/<R>/labels/<case>_whole.png         uint8 {0, 1}: whole tumour (extra key)
    <out>/datalist_<R>.json                   keys image / label / label_whole
    <out>/datalist.json                       all resolutions: image_<R> / label_<R> / label_whole_<R>
    <out>/skipped.json, <out>/cases/<case>.json (slide geometry, level used)

Resolutions above 8192 (16384, 32768, 65536: the APF paper's gigapixel settings) are not written as images:
a whole-slide square of 64K px is 12 GiB. For them ``datalist_<R>.json`` lists the slide and its masks where they
are (absolute paths; the raw folder is only read), and the bundle's gigapixel overlay streams them
(:mod:`monai_ext.wsi`: quadtree planned tile by tile, leaves read from the pyramid, the prediction written back
as a pyramidal TIFF).

A bundle selects a resolution with one override of its datalist path (``datalist_1024.json``)
and keeps MONAI's standard ``image``/``label`` keys (which MONAI Label also expects).
Split: patient-grouped (one slide per patient in PAIP 2019), ``--split`` fractions, ``--seed``.

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.paip`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from monai_ext.data.common import (
    DataError,
    SkipLog,
    atomic_path,
    check_image_content,
    data_origin,
    grouped_split,
    write_datalist,
)
from monai_ext.data.dataset import Option, moved_attribute
from monai_ext.data.limits import check_size, check_tiff_header
from monai_ext.data.runner import check_settings, run_cases

logger = logging.getLogger(__name__)

MIN_RESOLUTION, MAX_RESOLUTION = 512, 8192
#: resolutions above MAX_RESOLUTION up to this one are streamed from the slide (no image files written)
MAX_STREAMED_RESOLUTION = 65536
DEFAULT_RESOLUTIONS = (512, 1024)
DEFAULT_SPLIT = (0.7, 0.15, 0.15)
MASK_SUFFIXES = {"whole": "_whole.tif", "viable": "_viable.tif"}
WHITE = 255
#: splits a usable prepared PAIP folder needs (segmentation: no class check); see ``monai-ext prepare``
REQUIRED_SPLITS = ("training", "validation", "test")
CLASSES = None


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class Slide:
    """A whole-slide image opened through MONAI's ``WSIReader``.

    ``levels`` lists ``(height, width)`` per pyramid level (level 0 first). For the tifffile
    backend the pyramid is that of the first image series (``series[0].levels``): MONAI's own
    ``TiffFileWSIReader.get_level_count``/``get_size`` count every TIFF page, which for SVS
    includes the thumbnail, label and macro images, so the level sizes are taken here and
    passed to ``get_data`` explicitly.
    """

    def __init__(self, path: str | Path, backend: str = "tifffile"):
        from monai.data import WSIReader

        self.path = Path(path)
        self.backend = backend
        if not self.path.is_file():
            raise DataError(self.path, "slide file not found")
        try:
            self.reader = WSIReader(backend=backend, channel_dim=-1)
            self.wsi = self.reader.read(str(self.path))
            self.levels = self._level_dims()
        except DataError:
            raise
        except Exception as e:  # truncated / not a TIFF / unsupported by the backend
            raise DataError(self.path, f"cannot open slide with WSIReader({backend}) ({type(e).__name__}: {e})") from e
        if not self.levels:
            raise DataError(self.path, "slide has no image levels")

    def _level_dims(self) -> list[tuple[int, int]]:
        if self.backend == "tifffile":
            dims = []
            for lvl in self.wsi.series[0].levels:
                ax = dict(zip(lvl.axes, lvl.shape))
                dims.append((int(ax["Y"]), int(ax["X"])))
            return dims
        n = self.reader.get_level_count(self.wsi)
        return [tuple(int(v) for v in self.reader.get_size(self.wsi, lv)) for lv in range(n)]  # type: ignore[misc]

    @property
    def level_count(self) -> int:
        return len(self.levels)

    def downsample(self, level: int) -> tuple[float, float]:
        """(row, column) down-sampling factor of ``level`` relative to level 0."""
        (h0, w0), (h, w) = self.levels[0], self.levels[level]
        return h0 / h, w0 / w

    def read(self, level: int = 0) -> np.ndarray:
        """The whole image at ``level`` as ``(H, W, 3)`` uint8 RGB."""
        if not 0 <= level < self.level_count:
            raise DataError(
                self.path,
                f"pyramid level {level} requested but the slide has {self.level_count} pyramid level(s) {self.levels}",
            )
        check_size(self.path, (*self.levels[level], 3), 1, f"slide level {level}")  # before decoding it
        try:
            arr, _ = self.reader.get_data(self.wsi, location=(0, 0), size=self.levels[level], level=level, mode="RGB")
        except Exception as e:  # a truncated file usually fails here, decoding the tiles
            raise DataError(
                self.path, f"cannot decode level {level}; truncated or corrupt file? ({type(e).__name__}: {e})"
            ) from e
        arr = np.asarray(arr)
        if arr.shape[:2] != self.levels[level] or arr.shape[-1] != 3:
            raise DataError(self.path, f"level {level} read as shape {arr.shape}, expected {(*self.levels[level], 3)}")
        return arr.astype(np.uint8, copy=False)

    def close(self) -> None:
        close = getattr(self.wsi, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Slide:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mask_shape(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a mask TIFF (header only); its tiles / strips must fit the size limits."""
    check_tiff_header(path, whole_page=False)  # read segment by segment (read_mask_sums)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    except Exception as e:
        raise DataError(path, f"cannot read mask TIFF ({type(e).__name__}: {e})") from e


def _bins(start: int, length: int, res: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Output bins of ``length`` level-0 pixels from ``start`` for a ``side`` -> ``res`` grid:
    (reduceat start offsets within the run, bin index of each run)."""
    b = (np.arange(start, start + length, dtype=np.int64) * res) // side
    starts = np.flatnonzero(np.diff(b, prepend=-1))
    return starts, b[starts]


def read_mask_sums(path: Path, side: int, res: int) -> np.ndarray:
    """Foreground pixel counts of a level-0 mask TIFF on a ``res x res`` grid covering the
    ``side x side`` square anchored at the top-left (``res <= side``). Decodes one tile or
    strip at a time, so memory stays at one segment plus the output."""
    if res > side:
        raise ValueError(f"binning needs res <= side, got {res} > {side}")
    sums = np.zeros((res, res), np.float32)  # counts stay exact: bins hold < 2**24 pixels
    check_tiff_header(path, whole_page=False)  # one tile / strip at a time must fit the size limits
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            h_img, w_img = int(page.imagelength), int(page.imagewidth)
            for seg, idx, _shape in page.segments():
                if seg is None:  # empty tile (all zero)
                    continue
                y0, x0 = int(idx[-3]), int(idx[-2])
                seg = np.asarray(seg).reshape(seg.shape[-3], seg.shape[-2], -1)[..., 0]
                seg = seg[: h_img - y0, : w_img - x0]  # edge tiles are padded by the codec
                fg = (seg > 0).astype(np.float32)
                rs, rb = _bins(y0, fg.shape[0], res, side)
                cs, cb = _bins(x0, fg.shape[1], res, side)
                block = np.add.reduceat(np.add.reduceat(fg, rs, axis=0), cs, axis=1)
                sums[np.ix_(rb, cb)] += block
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"cannot decode mask TIFF ({type(e).__name__}: {e})") from e
    return sums


def read_mask_full(path: Path) -> np.ndarray:
    check_tiff_header(path)  # the whole page is decoded
    try:
        return (tifffile.imread(path, key=0) > 0).astype(np.uint8)
    except Exception as e:
        raise DataError(path, f"cannot decode mask TIFF ({type(e).__name__}: {e})") from e


def square_masks(path: Path, side: int, resolutions: Sequence[int]) -> dict[int, np.ndarray]:
    """The mask at each square resolution (uint8 {0, 1}); area fraction >= 0.5 when down-scaling,
    nearest when up-scaling (resolution above the slide size)."""
    out: dict[int, np.ndarray] = {}
    down = sorted(r for r in resolutions if r <= side)
    if down:
        top = down[-1]
        sums = read_mask_sums(path, side, top)
        counts = np.bincount((np.arange(side, dtype=np.int64) * top) // side, minlength=top).astype(np.float32)
        for r in down:
            k = top // r
            s = sums.reshape(r, k, r, k).sum(axis=(1, 3))
            c = counts.reshape(r, k).sum(axis=1)
            out[r] = (2 * s >= np.outer(c, c)).astype(np.uint8)  # area fraction >= 1/2
    up = [r for r in resolutions if r > side]
    if up:
        full = read_mask_full(path)
        canvas = np.zeros((side, side), np.uint8)
        canvas[: full.shape[0], : full.shape[1]] = full
        for r in up:
            out[r] = np.asarray(Image.fromarray(canvas).resize((r, r), Image.NEAREST))
    return out


def square_image(img: np.ndarray, padded_hw: tuple[int, int], resolutions: Sequence[int]) -> dict[int, np.ndarray]:
    """Pad ``img`` (H, W, 3) with white to ``padded_hw`` (bottom/right), resize to each ``R x R``
    (box filter when down-scaling, bilinear when up-scaling)."""
    ph, pw = max(padded_hw[0], img.shape[0]), max(padded_hw[1], img.shape[1])
    canvas = Image.new("RGB", (pw, ph), (WHITE, WHITE, WHITE))
    canvas.paste(Image.fromarray(img), (0, 0))
    out = {}
    for r in resolutions:
        resample = Image.BOX if r <= min(ph, pw) else Image.BILINEAR
        out[r] = np.asarray(canvas.resize((r, r), resample))
    return out


def choose_level(slide: Slide, target: int) -> int:
    """Coarsest level whose padded square side is still >= ``target`` pixels (else level 0)."""
    h0, w0 = slide.levels[0]
    side0 = max(h0, w0)
    best = 0
    for lv in range(slide.level_count):
        dy, dx = slide.downsample(lv)
        if side0 / max(dy, dx) >= target:
            best = lv
    return best


def check_resolutions(resolutions: Sequence[int]) -> list[int]:
    res = sorted({int(r) for r in resolutions})
    bad = [r for r in res if not (MIN_RESOLUTION <= r <= MAX_STREAMED_RESOLUTION) or r & (r - 1)]
    if not res or bad:
        raise ValueError(
            f"resolutions must be powers of two in {MIN_RESOLUTION}..{MAX_STREAMED_RESOLUTION} (quadtree patching; "
            f"above {MAX_RESOLUTION} streamed from the slide), got {bad or res}"
        )
    return res


def streamed(resolution: int) -> bool:
    """True for a resolution read from the slide at run time rather than written as images (above 8192)."""
    return int(resolution) > MAX_RESOLUTION


# --------------------------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------------------------


@dataclass
class _Case:
    case: str
    svs: Path
    whole: Path
    viable: Path


def discover(raw: Path) -> list[_Case]:
    """Every ``*.svs`` below ``raw`` with the mask paths beside it (existence checked later)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError(raw, "dataset folder not found")
    slides = sorted(p for p in raw.rglob("*") if p.suffix.lower() == ".svs" and p.is_file())
    if not slides:
        raise DataError(raw, "no .svs slides found (PAIP layout: <case>.svs, <case>_whole.tif, <case>_viable.tif)")
    cases = [
        _Case(p.stem, p, p.with_name(p.stem + MASK_SUFFIXES["whole"]), p.with_name(p.stem + MASK_SUFFIXES["viable"]))
        for p in slides
    ]
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case in seen:
            raise DataError(c.svs, f"duplicate case id {c.case!r} (also {seen[c.case]})")
        seen[c.case] = c.svs
    return cases


def _paths(out: Path, case: str, r: int) -> dict[str, Path]:
    return {
        "image": out / str(r) / "images" / f"{case}.png",
        "label": out / str(r) / "labels" / f"{case}_viable.png",
        "label_whole": out / str(r) / "labels" / f"{case}_whole.png",
    }


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


def _prepare_case(
    c: _Case, out: Path, resolutions: list[int], level: int, backend: str, overwrite: bool
) -> dict[str, Any]:
    info_path = out / "cases" / f"{c.case}.json"
    streamed_res = [r for r in resolutions if streamed(r)]
    resolutions = [r for r in resolutions if not streamed(r)]
    paths = {r: _paths(out, c.case, r) for r in resolutions}
    done = info_path.exists() and all(p.exists() for ps in paths.values() for p in ps.values())
    if done and not overwrite:
        return json.loads(info_path.read_text())

    for kind in ("whole", "viable"):
        if not getattr(c, kind).is_file():
            raise DataError(getattr(c, kind), f"{kind} mask missing for slide {c.svs.name}")
    with Slide(c.svs, backend=backend) as slide:
        h0, w0 = slide.levels[0]
        for kind in ("whole", "viable"):
            shape = mask_shape(getattr(c, kind))
            if shape != (h0, w0):
                raise DataError(getattr(c, kind), f"mask size {shape} differs from level 0 of {c.svs.name} {(h0, w0)}")
        side = max(h0, w0)
        if not resolutions:  # streamed only: the slide and masks are checked, nothing is written but the record
            return _write_info(info_path, {"case": c.case, "level0_size": [h0, w0], "square_side": side,
                                           "levels": [list(v) for v in slide.levels], "streamed": streamed_res})
        lv = choose_level(slide, max(resolutions)) if level < 0 else level
        img = slide.read(lv)
        dy, dx = slide.downsample(lv)
    check_image_content(img, c.svs, f"slide (pyramid level {lv})")
    images = square_image(img, (round(side / dy), round(side / dx)), resolutions)
    del img
    masks = {kind: square_masks(getattr(c, kind), side, resolutions) for kind in ("viable", "whole")}
    for r in resolutions:
        outside = int((masks["viable"][r] & (1 - masks["whole"][r])).sum())
        if outside > 0.01 * max(int(masks["viable"][r].sum()), 1):
            logger.warning(
                "%s: %d viable-tumour pixels at %d px lie outside the whole-tumour mask %s",
                c.viable,
                outside,
                r,
                c.whole,
            )
        _save_png(images[r], paths[r]["image"])
        _save_png(masks["viable"][r], paths[r]["label"])
        _save_png(masks["whole"][r], paths[r]["label_whole"])
    info = {"case": c.case, "level0_size": [h0, w0], "square_side": side, "level": lv, "level_downsample": [dy, dx]}
    if streamed_res:
        info["streamed"] = streamed_res
    return _write_info(info_path, info)


def _write_info(info_path: Path, info: dict[str, Any]) -> dict[str, Any]:
    info_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(info_path)
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(info_path)
    return info


#: ``monai-ext prepare paip`` options (keywords of :func:`prepare`)
PREPARE_OPTIONS = (
    Option.of(
        "--resolutions",
        type=int,
        nargs="+",
        default=list(DEFAULT_RESOLUTIONS),
        help=f"square output sizes, powers of two in {MIN_RESOLUTION}..{MAX_STREAMED_RESOLUTION}; above "
        f"{MAX_RESOLUTION} only a datalist of the slides is written (streamed by the bundle) (default %(default)s)",
    ),
    Option.of(
        "--level",
        type=int,
        default=-1,
        help="pyramid level to read (default -1: coarsest level at least as large as the largest resolution)",
    ),
    Option.of(
        "--backend",
        default="tifffile",
        choices=("tifffile", "cucim", "openslide"),
        help="MONAI WSIReader backend (default tifffile; the others need their package installed)",
    ),
    Option.of(
        "--split",
        type=float,
        nargs=3,
        default=list(DEFAULT_SPLIT),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions (default %(default)s)",
    ),
    Option.of("--workers", type=int, default=1, help="worker processes (default 1)"),
)


def prepare(
    raw: Path,
    out: Path,
    overwrite: bool = False,
    seed: int = 0,
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    level: int = -1,
    backend: str = "tifffile",
    split: Sequence[float] = DEFAULT_SPLIT,
    workers: int = 1,
) -> dict:
    """Prepare a PAIP 2019 folder (real or synthetic) into ``out``; returns the all-resolution
    datalist (``datalist.json``); ``datalist_<R>.json`` are written beside it."""
    raw, out = Path(raw), Path(out)
    res = check_resolutions(resolutions)
    # the level changes the pixels of every resolution; resolutions are separate folders
    settings = {"level": int(level)}
    check_settings(out, settings, overwrite)
    cases = discover(raw)
    assign = grouped_split([c.case for c in cases], fractions=tuple(split), seed=seed)
    skips = SkipLog()
    per_res: dict[int, dict[str, list]] = {r: {"training": [], "validation": [], "test": []} for r in res}
    combined: dict[str, list] = {"training": [], "validation": [], "test": []}
    out.mkdir(parents=True, exist_ok=True)
    worker = functools.partial(
        _prepare_case, out=out, resolutions=res, level=level, backend=backend, overwrite=overwrite
    )
    results = {}
    for c, info, error in run_cases(worker, cases, workers=workers, desc="PAIP slides"):
        if error is not None:
            skips.add(c.case, error, path=None if isinstance(error, DataError) else c.svs)
        else:
            results[c.case] = info
    for c in cases:  # in case order, whatever order the workers finished in
        if c.case not in results:
            continue
        info = results[c.case]
        split_name = assign[c.case]
        entry_all: dict[str, Any] = {"case": c.case, "level0_size": info["level0_size"]}
        for r in res:
            if streamed(r):  # the raw files where they are: absolute paths, never copied
                rel = {"image": str(c.svs.resolve()), "label": str(c.viable.resolve()),
                       "label_whole": str(c.whole.resolve())}
            else:
                rel = {k: str(p.relative_to(out)) for k, p in _paths(out, c.case, r).items()}
            per_res[r][split_name].append({**rel, "case": c.case, "level0_size": info["level0_size"]})
            entry_all.update({f"{k}_{r}": v for k, v in rel.items()})
        combined[split_name].append(entry_all)
    skips.write(out)
    meta = {
        "dataset": "paip",
        "labels": {"0": "background", "1": "viable tumour"},
        "settings": settings,
        "seed": seed,
        "data_origin": data_origin(raw),
    }
    for r in res:
        write_datalist(out, per_res[r], filename=f"datalist_{r}.json", resolution=r, **meta)
    write_datalist(out, combined, resolutions=res, **meta)
    return combined


#: generator names that moved to :mod:`monai_ext.data.synthetic.paip` (still found here, with a DeprecationWarning)
_MOVED = ("synthesize", "synth_slide", "write_svs", "write_mask", "APERIO", "TILE")


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, "monai_ext.data.synthetic.paip", _MOVED, name)
