"""Colour photographs (JPEG, PNG) for the 2D classification datasets (AIROGS fundus, ISIC dermoscopy).

Reading goes through MONAI's ``LoadImage`` with its ``PILReader`` after the header size check of
:mod:`monai_ext.data.limits`; a truncated or corrupt file raises :class:`~monai_ext.data.common.DataError` naming it
(Pillow refuses truncated images unless ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set, which this module never does).

Arrays are channel-first in MONAI's order for PIL images: ``(C, W, H)`` (MONAI's ``PILReader`` reverses the spatial
axes), so that what is written here as PNG and read back by a bundle's ``LoadImaged`` has the same layout.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from monai_ext.data.common import DataError, atomic_path, check_image_content
from monai_ext.data.limits import check_image_header

__all__ = ["crop_to_field_of_view", "read_rgb", "resize_square", "save_rgb_png", "to_square"]

logger = logging.getLogger(__name__)

SQUARE_MODES = ("crop", "pad")


@functools.lru_cache(maxsize=1)
def _loader():
    """One MONAI ``LoadImage`` per process (constructing it instantiates every registered reader, and MONAI's DICOM
    reader logs a warning each time without nvImageCodec)."""
    from monai.transforms import LoadImage

    return LoadImage(reader="PILReader", image_only=True, ensure_channel_first=True)


def read_rgb(path: str | os.PathLike, what: str = "photograph") -> np.ndarray:
    """A colour image as float32 ``(3, W, H)`` in ``[0, 1]`` (grey images repeated to 3 channels, alpha dropped).

    Raises :class:`DataError` naming ``path`` for a missing, truncated or undecodable file, one over the size
    limits, or an empty / constant image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} file missing")
    check_image_header(path, out_itemsize=4)
    try:
        img = _loader()(str(path))
    except Exception as e:  # PIL: "image file is truncated", "cannot identify image file", ...
        cause = e.__cause__ or e
        raise DataError(path, f"cannot decode {what} ({type(cause).__name__}: {cause})") from e
    arr = np.asarray(img, dtype=np.float32)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    elif arr.shape[0] == 4:
        arr = arr[:3]
    elif arr.shape[0] != 3:
        raise DataError(path, f"{what} has {arr.shape[0]} channels; expected grey, RGB or RGBA")
    check_image_content(arr, path, what)
    return arr / 255.0


def crop_to_field_of_view(image: np.ndarray, threshold: float = 0.06, margin: float = 0.02) -> np.ndarray:
    """``(C, W, H)`` -> the bounding box of pixels brighter than ``threshold`` (mean over channels), plus a
    ``margin`` (fraction of the box); a fundus photograph's black surround goes, the round field of view stays.
    The whole image when nothing passes the threshold."""
    bright = image.mean(axis=0) > threshold
    if not bright.any():
        return image
    xs, ys = np.nonzero(bright.any(axis=1))[0], np.nonzero(bright.any(axis=0))[0]
    x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
    mx, my = int(margin * (x1 - x0)), int(margin * (y1 - y0))
    W, H = image.shape[1:]
    return image[:, max(0, x0 - mx) : min(W, x1 + mx), max(0, y0 - my) : min(H, y1 + my)]


def to_square(image: np.ndarray, mode: str = "pad") -> np.ndarray:
    """``(C, W, H)`` -> ``(C, S, S)``: ``pad`` (zeros around the shorter side, ``S = max``) or ``crop`` (centre
    crop of the longer side, ``S = min``)."""
    if mode not in SQUARE_MODES:
        raise ValueError(f"unknown square mode {mode!r}; use one of {SQUARE_MODES}")
    _, W, H = image.shape
    if mode == "crop":
        s = min(W, H)
        x0, y0 = (W - s) // 2, (H - s) // 2
        return image[:, x0 : x0 + s, y0 : y0 + s]
    s = max(W, H)
    out = np.zeros((image.shape[0], s, s), dtype=image.dtype)
    x0, y0 = (s - W) // 2, (s - H) // 2
    out[:, x0 : x0 + W, y0 : y0 + H] = image
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``(C, S, S)`` -> ``(C, size, size)`` (MONAI ``Resize``: area averaging when shrinking, bilinear with
    anti-aliasing otherwise), clipped to ``[0, 1]``."""
    from monai.transforms import Resize

    down = size <= image.shape[1]
    out = Resize((size, size), mode="area" if down else "bilinear", anti_aliasing=not down)(image.astype(np.float32))
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def save_rgb_png(image: np.ndarray, path: Path) -> None:
    """Write ``(3, W, H)`` in ``[0, 1]`` as an 8-bit RGB PNG, atomically (read back by ``LoadImaged`` as the same
    ``(3, W, H)`` array, up to rounding)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    hwc = np.round(np.transpose(image, (2, 1, 0)) * 255).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(hwc), mode="RGB").save(tmp, format="PNG", compress_level=1)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# the preparation steps AIROGS and ISIC share


def prepare_photo(case: dict, square: str = "pad", fov: bool = False) -> dict:
    """Worker of :func:`prepare_photos`: read ``case["file"]``, optionally crop to the field of view, make it
    square (``square``), write it at every resolution of ``case["outputs"]`` (``{res: png path}``).
    Returns the source size ``{"width", "height"}``."""
    image = read_rgb(case["file"], case.get("what", "photograph"))
    size = {"width": int(image.shape[1]), "height": int(image.shape[2])}
    if fov:
        image = crop_to_field_of_view(image)
    image = to_square(image, square)
    for res, out in case["outputs"].items():
        save_rgb_png(resize_square(image, int(res)), Path(out))
    return size


def photo_case(case_id: str, file: str | os.PathLike, out: Path, resolutions: list[int], what: str) -> dict:
    """One case for :func:`prepare_photos`: ``file`` written as ``out/images_<R>/<case_id>.png`` for every R."""
    outputs = {r: str(Path(out) / f"images_{r}" / f"{case_id}.png") for r in resolutions}
    return {"id": case_id, "file": str(file), "outputs": outputs, "what": what}


def prepare_photos(cases: list[dict], skips, workers: int = 1, square: str = "pad", fov: bool = False,
                   desc: str = "images", overwrite: bool = False) -> set[str]:
    """Run :func:`prepare_photo` over ``cases`` (each ``{"id", "file", "outputs"}``, see :func:`photo_case`);
    failures go to ``skips`` (a :class:`~monai_ext.data.common.SkipLog`) with the file named. A case whose PNGs all
    exist is kept as it is unless ``overwrite`` (said in the log; the caller has checked the folder's settings).
    Returns the ids that are ready."""
    from monai_ext.data.runner import run_cases

    done = {c["id"] for c in cases if not overwrite and all(Path(p).is_file() for p in c["outputs"].values())}
    if done:
        logger.info("%d image(s) already prepared (use --overwrite to redo)", len(done))
    todo = [c for c in cases if c["id"] not in done]
    worker = functools.partial(prepare_photo, square=square, fov=fov)
    for case, _size, error in run_cases(worker, todo, workers=workers, desc=desc):
        if error is not None:
            skips.add(case["id"], error)
        else:
            done.add(case["id"])
    return done


def write_resolution_datalists(out: Path, datalist: dict, meta: dict, resolutions: list[int]) -> None:
    """``datalist_<R>.json`` per resolution (entries' ``image`` = ``image_<R>``) and ``datalist.json`` (first
    resolution), so that a bundle picks a resolution by its datalist name and always reads the key ``image``."""
    import json

    from monai_ext.data.common import write_datalist

    out.mkdir(parents=True, exist_ok=True)
    for r in resolutions:
        per_res = {k: [{**e, "image": e[f"image_{r}"]} for e in v] for k, v in datalist.items()}
        path = out / f"datalist_{r}.json"
        tmp = atomic_path(path)
        tmp.write_text(json.dumps({**per_res, **meta}, indent=2) + "\n")
        tmp.replace(path)
    write_datalist(out, datalist, **meta)
