"""Whole-slide feature files in the layout CLAM-style MIL tools read, written and read in one place.

One file per slide, named by the slide (e.g. the TCGA barcode with its UUID)::

    <dir>/h5_files/<slide>.h5    datasets ``features`` float32 [N, D] and ``coords`` int64 [N, 2] (x, y of each
                                 tile's top-left corner in level-0 pixels); attributes: tile size, magnification,
                                 encoder, ... (CLAM's layout; its ``coords`` carry ``patch_size``/``patch_level``)
    <dir>/pt_files/<slide>.pt    ``{"features": [N, D], "coords": [N, 2]}`` tensors (CLAM's ``pt_files`` hold the
                                 bare feature tensor; both are read)

Writing goes to a hidden temporary sibling that is renamed onto the final name when complete, so a file under
its final name is always a finished slide (what makes ``monai-ext features`` resumable). ``.pt`` files are read
with ``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_ext.data.common import DataError, atomic_path

__all__ = ["FEATURE_DIRS", "FEATURE_SUFFIXES", "feature_file", "find_feature_files", "read_features",
           "feature_dim", "write_features", "slide_id_of"]

#: file format -> sub-folder of the feature folder
FEATURE_DIRS: dict[str, str] = {"h5": "h5_files", "pt": "pt_files"}
FEATURE_SUFFIXES = (".h5", ".pt")


def feature_file(out: str | os.PathLike, slide_id: str, fmt: str = "h5") -> Path:
    """``<out>/h5_files/<slide_id>.h5`` (or ``pt_files/<slide_id>.pt``)."""
    if fmt not in FEATURE_DIRS:
        raise ValueError(f"feature file format must be one of {sorted(FEATURE_DIRS)}, got {fmt!r}")
    return Path(out) / FEATURE_DIRS[fmt] / f"{slide_id}.{fmt}"


def slide_id_of(path: str | os.PathLike) -> str:
    """The slide name of a feature file (its name without ``.h5`` / ``.pt``; barcodes keep their dots)."""
    name = Path(path).name
    for suffix in FEATURE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_feature_files(root: str | os.PathLike) -> list[Path]:
    """Finished feature files under ``root`` (recursively; temporary ``.*.partial.*`` files excluded), sorted. When a
    slide has both an ``.h5`` and a ``.pt`` file the ``.h5`` one is used."""
    found: dict[tuple[Path, str], Path] = {}
    for suffix in (".pt", ".h5"):  # .h5 last: it wins
        for p in sorted(Path(root).rglob(f"*{suffix}")):
            if p.is_file() and not p.name.startswith("."):
                found[(p.parent.parent, slide_id_of(p))] = p
    return sorted(found.values())


def write_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray,
                   attrs: Mapping[str, Any] | None = None) -> Path:
    """Write one slide's ``features`` ``[N, D]`` and ``coords`` ``[N, 2]`` atomically (temp file, then rename)."""
    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f"{path}: features {features.shape} and coords {coords.shape} do not match ([N, D], [N, 2])")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    if path.suffix == ".h5":
        import h5py

        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features)
            ds = f.create_dataset("coords", data=coords)
            for k, v in dict(attrs or {}).items():
                ds.attrs[k] = v if isinstance(v, (int, float, str, np.ndarray)) else str(v)
                f.attrs[k] = ds.attrs[k]
    elif path.suffix == ".pt":
        import torch

        torch.save({"features": torch.from_numpy(features), "coords": torch.from_numpy(coords),
                    "attrs": {k: v if isinstance(v, (int, float, str)) else str(v)
                              for k, v in dict(attrs or {}).items()}}, tmp)
    else:
        raise ValueError(f"{path}: feature files end in .h5 or .pt")
    tmp.replace(path)
    return path


def _check(path: Path, features: np.ndarray, coords: np.ndarray | None) -> None:
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise DataError(path, f"features must be [N, D] with N, D >= 1, got shape {tuple(features.shape)}")
    if coords is not None and coords.shape != (features.shape[0], 2):
        raise DataError(path, f"coords {tuple(coords.shape)} do not match features {tuple(features.shape)} "
                              f"(expected [{features.shape[0]}, 2])")
    n_bad = int(features.size - np.count_nonzero(np.isfinite(features)))
    if n_bad:
        raise DataError(path, f"features hold {n_bad} non-finite value(s) (NaN or inf)")


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``(features float32 [N, D], coords int64 [N, 2] or None)`` of one feature file; :class:`DataError` naming
    the file when it cannot be read or its arrays are malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "feature file not found")
    coords = None
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise DataError(path, f"no 'features' dataset (has {sorted(f.keys())})")
                features = np.asarray(f["features"][()], dtype=np.float32)
                if "coords" in f:
                    coords = np.asarray(f["coords"][()], dtype=np.int64)
        elif path.suffix == ".pt":
            import torch

            body = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(body, Mapping):
                if "features" not in body:
                    raise DataError(path, f"no 'features' entry (has {sorted(body)})")
                features = np.asarray(body["features"], dtype=np.float32)
                coords = np.asarray(body["coords"], dtype=np.int64) if body.get("coords") is not None else None
            else:
                features = np.asarray(body, dtype=np.float32)
        else:
            raise DataError(path, "not a feature file (.h5 or .pt)")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py / torch raise many types for a damaged file
        raise DataError(path, f"unreadable feature file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    _check(path, features, coords)
    return features, coords


def feature_dim(path: str | os.PathLike) -> tuple[int, int]:
    """``(N, D)`` of a feature file, from the HDF5 header where possible (``.pt``: the file is read)."""
    path = Path(path)
    if path.suffix == ".h5":
        try:
            import h5py

            with h5py.File(path, "r") as f:
                shape = tuple(int(s) for s in f["features"].shape)
        except Exception as e:  # noqa: BLE001
            raise DataError(path, f"unreadable feature file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
                from e
        if len(shape) != 2 or min(shape) < 1:
            raise DataError(path, f"features must be [N, D] with N, D >= 1, got shape {shape}")
        return shape  # type: ignore[return-value]
    features, _ = read_features(path)
    return int(features.shape[0]), int(features.shape[1])
