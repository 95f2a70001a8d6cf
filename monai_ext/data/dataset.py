"""The dataset interface: one object per dataset, behind which the ``synth`` and ``prepare`` commands work.

A dataset is two modules with fixed roles, and the dependency points one way:

- ``monai_ext.data.<name>``: the real on-disk layout and its preparation: ``prepare(raw, out, overwrite, seed,
  **options) -> datalist``, ``PREPARE_OPTIONS`` (its command-line options, as :class:`Option`),
  ``REQUIRED_SPLITS`` and ``CLASSES`` (checked after ``prepare``: :func:`monai_ext.data.common.check_splits`);
- ``monai_ext.data.synthetic.<name>``: synthetic data in that layout: ``synthesize(out, cases, seed, **options)``
  and ``SYNTH_OPTIONS``. It may import the preparation module's layout constants, never the other way round.

:data:`DATASETS` lists them; :func:`get_dataset` returns one as a :class:`Dataset`. The command-line layer
(:mod:`monai_ext.data.cli`) builds every dataset's sub-commands from the options declared here, so that a dataset
module holds no ``argparse`` code. Adding a dataset: write the two modules and add one line to :data:`DATASETS`.
"""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from monai_ext.data.common import SKIPPED_NAME, check_splits


@dataclass(frozen=True)
class Option:
    """One command-line option of ``synth`` or ``prepare``: ``argparse.add_argument(*flags, **kwargs)``.

    Declared as data (not argparse calls) so that a dataset module carries no CLI code and the one CLI layer
    (:mod:`monai_ext.data.cli`) decides how options are presented. The destination name (``--out-size`` ->
    ``out_size``) is the keyword of ``prepare`` / ``synthesize`` the value is passed to."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, *flags: str, **kwargs: Any) -> Option:
        """``Option.of("--size", type=int, nargs=3, help=...)``, the ``add_argument`` call shape."""
        return cls(tuple(flags), dict(kwargs))

    @property
    def dest(self) -> str:
        return str(self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_"))


@runtime_checkable
class Dataset(Protocol):
    """What the CLI, the demo and the tests use of a dataset."""

    name: str

    @property
    def prepare_options(self) -> Sequence[Option]: ...

    @property
    def synth_options(self) -> Sequence[Option]: ...

    @property
    def required_splits(self) -> tuple[str, ...]: ...

    @property
    def classes(self) -> tuple[int, ...] | None: ...

    def synthesize(self, out: Path, cases: int | None = None, seed: int = 0, **options: Any) -> None: ...

    def prepare(self, raw: Path, out: Path, **options: Any) -> dict: ...


@dataclass(frozen=True)
class ModuleDataset:
    """A :class:`Dataset` implemented by a preparation module and a synthetic-data module (imported on first use,
    so that listing the datasets imports no reader or generator)."""

    name: str
    prepare_module: str
    synthetic_module: str

    def _prep(self) -> ModuleType:
        return importlib.import_module(self.prepare_module)

    def _synth(self) -> ModuleType:
        return importlib.import_module(self.synthetic_module)

    @property
    def prepare_options(self) -> Sequence[Option]:
        return tuple(getattr(self._prep(), "PREPARE_OPTIONS", ()))

    @property
    def synth_options(self) -> Sequence[Option]:
        return tuple(getattr(self._synth(), "SYNTH_OPTIONS", ()))

    @property
    def required_splits(self) -> tuple[str, ...]:
        return tuple(getattr(self._prep(), "REQUIRED_SPLITS", ()))

    @property
    def classes(self) -> tuple[int, ...] | None:
        classes = getattr(self._prep(), "CLASSES", None)
        return None if classes is None else tuple(classes)

    def synthesize(self, out: Path, cases: int | None = None, seed: int = 0, **options: Any) -> None:
        """Synthetic data in the real layout into ``out`` (``cases=None``: the generator's default count)."""
        if cases is not None:
            options["cases"] = cases
        self._synth().synthesize(Path(out), seed=seed, **options)

    def prepare(self, raw: Path, out: Path, **options: Any) -> dict:
        """Prepared files, ``datalist.json`` and ``skipped.json`` from the layout in ``raw``; returns the datalist."""
        return self._prep().prepare(Path(raw), Path(out), **options)


#: the datasets of monai_ext, by the name the CLI and the bundles use
DATASETS: dict[str, Dataset] = {
    name: ModuleDataset(name, f"monai_ext.data.{name}", f"monai_ext.data.synthetic.{name}")
    for name in ("airogs", "btcv", "duke", "isic", "paip", "radimagenet_brain", "tcga", "vindr_cxr")
}


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}") from None


def skipped_count(out: Path) -> int:
    """Entries of ``out/skipped.json`` (0 when absent or unreadable)."""
    try:
        return len(json.loads((Path(out) / SKIPPED_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def prepare_checked(dataset: str | Dataset, raw: Path, out: Path, **options: Any) -> dict:
    """``prepare`` of ``dataset``, then its split checks (``REQUIRED_SPLITS`` and, for classification, ``CLASSES``):
    raises :class:`monai_ext.data.common.PrepareError` when the result is unusable (the datalist is still written,
    for inspection)."""
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    datalist = ds.prepare(raw, out, **options)
    check_splits(datalist, Path(out), ds.required_splits, ds.classes, n_skipped=skipped_count(out))
    return datalist


def moved_attribute(module: str, target: str, names: Sequence[str], name: str) -> Any:
    """Module ``__getattr__`` body for names that moved from ``module`` to ``target`` (the synthetic generators left
    the preparation modules): old callers still find them, with a ``DeprecationWarning`` naming the new place."""
    if name not in names:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} moved to {target}.{name}", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(target), name)
