"""Feature sequences of whole-slide images in MONAI's engines: loading, token subsampling, padding to a batch.

A datalist entry's ``image`` is a slide's feature file (:mod:`monai_ext.data.wsi_features`). In a bundle::

    LoadFeaturesd(keys="image", feature_dim=D)          # image: MetaTensor (N, D), coords: (N, 2); case id = slide
    SubsampleTokensd(keys="image", max_tokens=4096)     # training: a random subset when N > max_tokens
    DataLoader(..., collate_fn=pad_collate)             # image (B, N_max, D), mask (B, N_max) bool, True = real
    PrepareBatchExtraInput(extra_keys={"mask": "mask"}) # network(image, mask=mask)

so slides of any length share a batch, and the network (:class:`monai_ext.networks.WSITransformer`) ignores the
padding. With a batch size of 1 (the paper's) no padding happens at all.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, list_data_collate
from monai.transforms import MapTransform, Randomizable

from monai_ext.data.common import DataError
from monai_ext.data.wsi_features import read_features, slide_id_of

__all__ = ["LoadFeaturesd", "SubsampleTokensd", "pad_collate", "screen_features"]

logger = logging.getLogger(__name__)


class LoadFeaturesd(MapTransform):
    """Read a slide's feature file into ``MetaTensor (N, D)`` float32 (``filename_or_obj`` = slide id, so reports
    and ``ClassificationSaver`` name the slide) and its tile coordinates into ``coords_key`` ``(N, 2)``.

    ``feature_dim``: the expected ``D`` (the network's input); another ``D`` raises :class:`DataError` naming the
    file, before the network sees it."""

    def __init__(self, keys: KeysCollection, feature_dim: int | None = None, coords_key: str = "coords",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.feature_dim = None if feature_dim is None else int(feature_dim)
        self.coords_key = coords_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            features, coords = read_features(path)
            if self.feature_dim is not None and features.shape[1] != self.feature_dim:
                raise DataError(path, f"feature dimension {features.shape[1]}, the network expects {self.feature_dim}")
            d[key] = MetaTensor(torch.from_numpy(features),
                                meta={"filename_or_obj": slide_id_of(path), "source": str(path)})
            if coords is None:
                coords = np.full((features.shape[0], 2), -1, np.int64)
            d[self.coords_key] = torch.from_numpy(coords)
        return d


class SubsampleTokensd(Randomizable, MapTransform):
    """At most ``max_tokens`` tokens per slide: a random subset (``random=True``, training; order kept) or evenly
    spaced ones (``random=False``); ``None`` or ``0`` keeps all (``0``: what a command line can pass, since
    ``monai.bundle run`` drops ``None`` overrides). ``coords_key`` follows the same selection."""

    def __init__(self, keys: KeysCollection, max_tokens: int | None, random: bool = True,
                 coords_key: str | None = "coords", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if max_tokens is not None and int(max_tokens) < 0:
            raise ValueError(f"max_tokens must be >= 0 (0 or None: all tokens), got {max_tokens}")
        self.max_tokens = None if max_tokens is None or int(max_tokens) == 0 else int(max_tokens)
        self.random = random
        self.coords_key = coords_key

    def randomize(self, data: Any = None) -> None:
        pass

    def _select(self, n: int) -> torch.Tensor | None:
        if self.max_tokens is None or n <= self.max_tokens:
            return None
        if self.random:
            return torch.from_numpy(np.sort(self.R.choice(n, self.max_tokens, replace=False)))
        return torch.from_numpy(np.linspace(0, n - 1, self.max_tokens).round().astype(np.int64))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            idx = self._select(int(d[key].shape[0]))
            if idx is None:
                continue
            d[key] = d[key][idx]
            if self.coords_key is not None and self.coords_key in d:
                d[self.coords_key] = d[self.coords_key][idx]
        return d


def pad_collate(batch: Sequence[Mapping[str, Any]], key: str = "image", mask_key: str = "mask",
                coords_key: str = "coords") -> dict[str, Any]:
    """Pad ``key`` ``(N_i, D)`` of every item to the longest ``N`` with zeros, add ``mask_key`` ``(N,)`` bool
    (True = real token) and pad ``coords_key`` with -1; then MONAI's ``list_data_collate``. Returns the batch:
    ``key`` ``(B, N_max, D)``, ``mask_key`` ``(B, N_max)``."""
    n_max = max(int(item[key].shape[0]) for item in batch)
    out = []
    for item in batch:
        d = dict(item)
        x = d[key]
        n = int(x.shape[0])
        d[key] = torch.nn.functional.pad(x, (0, 0, 0, n_max - n)) if n < n_max else x
        mask = torch.zeros(n_max, dtype=torch.bool)
        mask[:n] = True
        d[mask_key] = mask
        if coords_key in d and n < n_max:
            d[coords_key] = torch.nn.functional.pad(d[coords_key], (0, 0, 0, n_max - n), value=-1)
        out.append(d)
    return list_data_collate(out)


def screen_features(data: Sequence[Mapping[str, Any]], feature_dim: int | None = None,
                    key: str = "image") -> Any:
    """Inference inputs: keep the entries whose ``key`` feature file reads (:func:`read_features`) with
    ``feature_dim`` features; log every other one with the reason (the returned list's ``skipped``, for
    ``InferenceSummary`` / ``skipped.json``). Raises :class:`DataError` when none is left."""
    from .inference import InputList

    kept, skipped = InputList(), []
    for item in data:
        name = str(item.get(key, "<no file>"))
        try:
            if key not in item:
                raise ValueError(f"no {key!r} in the entry {dict(item)}")
            features, _ = read_features(name)
            if feature_dim is not None and features.shape[1] != int(feature_dim):
                raise DataError(name, f"feature dimension {features.shape[1]}, the network expects {feature_dim}")
        except (DataError, ValueError) as e:
            reason = e.problem if isinstance(e, DataError) else str(e)
            logger.warning("inference: skipping %s: %s", name, reason)
            skipped.append({"file": name, "reason": reason})
            continue
        kept.append(dict(item))
    kept.skipped = skipped
    if not kept:
        raise DataError(skipped[0]["file"] if skipped else "input_files",
                        f"no usable feature file: {len(skipped)} of {len(data)} skipped")
    return kept
