"""``monai-ext demo``: the whole workflow of a bundle on the embedded default (synthetic data in the
real on-disk layout): synth -> prepare -> train -> evaluate, through ``python -m monai.bundle run``.

``monai-ext demo --toy`` instead trains the 2D ViT for a few seconds on an in-memory task: a noisy
image holds one bright disc at a random position; the label says whether the disc radius is above the
middle of the radius range (chance: 50 %).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .bundle.registry import BUNDLE_DATASETS, BUNDLE_NAMES, BundleError
from .bundle.registry import bundles_dir as find_bundles_dir
from .networks import ViT

logger = logging.getLogger(__name__)


def make_disc_task(n: int, size: int = 32, seed: int = 0, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, size, size)`` and labels ``(n,)`` of the disc-radius task."""
    rng = np.random.default_rng(seed)
    r_lo, r_hi = size * 0.08, size * 0.28
    radius = rng.uniform(r_lo, r_hi, n)
    labels = (radius > (r_lo + r_hi) / 2).astype(np.int64)
    cy = rng.uniform(r_hi, size - r_hi, n)
    cx = rng.uniform(r_hi, size - r_hi, n)
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    img = (d2 <= radius[:, None, None] ** 2).astype(np.float32)
    img += noise * rng.standard_normal(img.shape).astype(np.float32)
    return torch.from_numpy(img[:, None]), torch.from_numpy(labels)


def train_demo(attention: str = "softmax_free", steps: int = 150, batch_size: int = 32, size: int = 32,
               seed: int = 0, lr: float = 2e-3, progress: bool = True) -> dict:
    """Train a tiny 2D ViT on :func:`make_disc_task`; return held-out accuracy and timing."""
    torch.manual_seed(seed)
    x_train, y_train = make_disc_task(steps * batch_size // 2, size, seed)
    x_test, y_test = make_disc_task(512, size, seed + 1)
    model = ViT(in_channels=1, img_size=(size, size), patch_size=8, hidden_size=64, mlp_dim=128, num_layers=2,
                num_heads=4, spatial_dims=2, classification=True, num_classes=2, attention=attention)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc=f"demo ViT ({attention})", disable=not progress):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        loss = loss_fn(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"attention": attention, "steps": steps, "batch_size": batch_size, "final_loss": loss.item(),
            "test_accuracy": acc, "chance": 0.5, "train_seconds": train_s}


#: dataset -> (synthetic cases, prepare options, train overrides) of the demo
DEMO_SETTINGS: dict[str, tuple[int, dict, dict]] = {
    # CPU-sized: 64 px at patch 8 (64 tokens); the bundle's own default is 224 px at patch 16
    "vindr_cxr": (1200, {"resolutions": [64]}, {"image_size": 64, "patch_size": 8, "epochs": 30, "num_workers": 0}),
    "duke": (922, {"workers": 2}, {}),  # the real DUKE size
    "btcv": (24, {}, {}),
    "paip": (12, {}, {}),
    # CPU-sized; the generators' defaults are the real prevalences (3.2 % RG, 1.8 % malignant): too few positives
    # for a test split of a CPU demo, so the demo synthesizes more (DEMO_SYNTH_OPTIONS)
    "airogs": (600, {"resolutions": [64]}, {"image_size": 64, "patch_size": 16, "epochs": 20, "num_workers": 0}),
    "isic": (1000, {"resolutions": [64]}, {"image_size": 64, "patch_size": 16, "epochs": 20, "num_workers": 0}),
    # the bundle's CPU defaults at 56 px; 40 images per class (its docs/README.md measurement)
    "radimagenet_brain": (400, {"resolutions": [56]}, {"num_workers": 0}),
}
#: dataset -> options of its generator for the demo (default: the generator's own)
DEMO_SYNTH_OPTIONS: dict[str, dict] = {"airogs": {"rg_fraction": 0.3}, "isic": {"malignant_fraction": 0.1},
                                       "radimagenet_brain": {"balanced": True}}
#: bundle -> (dataset name, synthetic cases, prepare options, train overrides) of the demo
DEMO_BUNDLES: dict[str, tuple[str, int, dict, dict]] = {
    name: (dataset, *DEMO_SETTINGS[dataset]) for name, dataset in BUNDLE_DATASETS.items()
}


def bundles_dir() -> Path:
    """``bundles/`` of the working directory (``--bundles-dir`` says otherwise); :class:`BundleError` if missing."""
    return find_bundles_dir()


DEMO_MARKER = ".monai_ext_demo.json"


class FolderNotOwned(RuntimeError):
    """The demo was about to write into a folder holding files it did not create."""


class DemoFolder:
    """A folder the demo owns: its marker (:data:`DEMO_MARKER`) is written before any other file, and once
    the folder is complete the marker lists every file the demo wrote there.

    The demo writes, reuses or removes files only in such a folder and only the files it wrote itself
    (the manifest; for an interrupted run without a manifest, the files written after its marker). A folder
    with anything else in it is refused (:class:`FolderNotOwned`) and left as it is.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.marker = self.path / DEMO_MARKER

    def files(self) -> list[str]:
        """Every file (and link) below the folder except the marker, relative, sorted."""
        if not self.path.is_dir():
            return []
        out = []
        for p in self.path.rglob("*"):
            if (p.is_file() or p.is_symlink()) and p != self.marker:
                out.append(p.relative_to(self.path).as_posix())
        return sorted(out)

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def _owned(self, state: dict[str, Any]) -> set[str]:
        listed = set(state.get("files", []))
        if state.get("state") == "complete":
            return listed
        started = int(state.get("started_ns", 0))  # interrupted: also what was written after the marker
        return listed | {f for f in self.files() if (self.path / f).lstat().st_mtime_ns >= started}

    def check(self) -> None:
        """Raise :class:`FolderNotOwned` unless the folder is absent, empty, or holds only demo files."""
        if self.path.exists() and not self.path.is_dir():
            raise FolderNotOwned(f"{self.path} is a file, not a folder: the demo does not touch it")
        present = self.files()
        if not present:
            return
        state = self.state()
        foreign = present if state is None else [f for f in present if f not in self._owned(state)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise FolderNotOwned(
                f"{self.path} holds {len(foreign)} file(s) the demo did not create ({shown}); the demo writes "
                f"synthetic data only into a folder it owns and changes nothing here: move your files elsewhere "
                f"(e.g. real data to another --raw / --out folder), or delete the folder yourself if it only "
                f"holds old demo data")

    def claim(self, stamp: dict[str, Any]) -> bool:
        """Take the folder for data described by ``stamp``: ``True`` when it already holds complete data for
        that stamp (reuse); otherwise remove the demo's own stale files, write the marker, return ``False``."""
        self.check()
        state = self.state()
        if state is not None and state.get("state") == "complete" and state.get("stamp") == stamp:
            return True
        if state is not None:
            self._remove(self._owned(state))
        self.path.mkdir(parents=True, exist_ok=True)
        self._write({"owner": "monai-ext demo", "state": "writing", "stamp": stamp, "started_ns": time.time_ns()})
        return False

    def seal(self) -> None:
        """Record every file now in the folder as written by the demo (called when the step finished)."""
        state = self.state() or {}
        self._write({**state, "state": "complete", "completed_ns": time.time_ns(), "files": self.files()})

    def _write(self, body: dict[str, Any]) -> None:
        tmp = self.marker.with_name(self.marker.name + ".partial")
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        tmp.replace(self.marker)

    def _remove(self, files: set[str]) -> None:
        logger.info("removing %d file(s) of an earlier demo run from %s", len(files), self.path)
        parents = set()
        for f in sorted(files):
            p = self.path / f
            if p.is_file() or p.is_symlink():
                p.unlink()
            parents.update(q for q in p.parents if self.path in q.parents)
        for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):  # folders that are now empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def move_aside(folder: Path, keep: str = "previous") -> Path | None:
    """Move the contents of ``folder`` (except ``keep``) into ``folder/keep/<UTC time>/`` so that a new run
    does not overwrite them; returns that folder (``None`` when there was nothing to move)."""
    folder = Path(folder)
    items = [p for p in folder.iterdir() if p.name != keep] if folder.is_dir() else []
    if not items:
        return None
    dest = folder / keep / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
        n += 1
    dest.mkdir(parents=True)
    for p in items:
        p.rename(dest / p.name)
    logger.info("kept the previous contents of %s in %s", folder, dest)
    return dest


def demo_data(root: Path, dataset: str, cases: int, seed: int = 0, prep_opts: dict | None = None) -> Path:
    """Synthesize and prepare ``dataset`` into ``root/data/raw`` and ``root/data/prepared``, folders the demo
    owns (:class:`DemoFolder`); reuses both when complete for the same settings. Returns the prepared folder.

    Raises :class:`FolderNotOwned` (before writing anything) when either folder holds other files, and
    :class:`monai_ext.data.common.DataError` when the prepared data are unusable."""
    from .data.dataset import get_dataset, prepare_checked

    prep_opts = dict(prep_opts or {})
    raw, prepared = DemoFolder(root / "data" / "raw"), DemoFolder(root / "data" / "prepared")
    raw.check()
    prepared.check()
    synth_opts = DEMO_SYNTH_OPTIONS.get(dataset, {})
    stamp = {"dataset": dataset, "cases": int(cases), "seed": int(seed)}
    if synth_opts:  # the stamp of the datasets without options stays as it was (their data are reused)
        stamp["synth"] = synth_opts
    if raw.claim(stamp):
        logger.info("[1/4] synthetic data already in %s", raw.path)
    else:
        logger.info("[1/4] synthesizing %d %s cases into %s", cases, dataset, raw.path)
        get_dataset(dataset).synthesize(raw.path, cases=cases, seed=seed, **synth_opts)
        raw.seal()
    # prepared files of other synthetic data must not be reused: the stamp names the raw data's generation
    prep_stamp = {**stamp, "prepare": json.loads(json.dumps(prep_opts)),
                  "raw_completed_ns": (raw.state() or {}).get("completed_ns")}
    prepared.claim(prep_stamp)
    logger.info("[2/4] preparing into %s", prepared.path)
    prepared._write({**(prepared.state() or {}), "state": "writing", "started_ns": time.time_ns()})
    prepare_checked(dataset, raw.path, prepared.path, **prep_opts)
    prepared.seal()
    return prepared.path


def run_bundle_demo(bundle: str, epochs: int | None = None, seed: int = 0, root: Path | None = None,
                    bundles: Path | None = None) -> dict:
    """synth -> prepare -> train -> evaluate one bundle into ``<bundles>/<bundle>/{data,models,eval}``
    (``root``: the bundle folder itself; ``bundles``: default :func:`bundles_dir`).

    Data go only into folders the demo owns (:func:`demo_data`); an earlier ``eval/`` is moved to
    ``eval/previous/<time>/`` (:func:`move_aside`); ``models/`` is left to the training run."""
    if bundle not in DEMO_BUNDLES:
        raise ValueError(f"unknown bundle {bundle!r}; available: {sorted(DEMO_BUNDLES)}")
    dataset, cases, prep_opts, overrides = DEMO_BUNDLES[bundle]
    if root is None:
        root = (find_bundles_dir(bundles) if bundles is not None else bundles_dir()) / bundle
    root = Path(root)
    if not (root / "configs" / "train.yaml").is_file():
        raise BundleError(f"{root / 'configs' / 'train.yaml'} not found: not the {bundle} bundle folder; give the "
                          f"folder holding the bundles with --bundles-dir")
    t0 = time.perf_counter()
    demo_data(root, dataset, cases, seed, prep_opts)
    cfg = root / "configs"
    common = ["--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf")]
    overrides = {**overrides, **({"epochs": epochs} if epochs is not None else {})}
    for k, v in overrides.items():
        common += [f"--{k}", json.dumps(v)]
    # small networks on few cores: one intra-op thread avoids oversubscription (set OMP_NUM_THREADS to change)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    logger.info("[3/4] training: python -m monai.bundle run training --config_file configs/train.yaml %s",
                " ".join(common[4:]))
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                    str(cfg / "train.yaml"), *common], cwd=root, check=True, env=env)
    logger.info("[4/4] evaluating the best checkpoint on the test split")
    move_aside(root / "eval")
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    str([str(cfg / "train.yaml"), str(cfg / "evaluate.yaml")]), *common], cwd=root, check=True,
                   env=env)
    metrics = {}
    for line in (root / "eval" / "metrics.csv").read_text().splitlines():
        if "," in line:
            k, v = line.split(",", 1)
            metrics[k] = float(v) if v.replace(".", "", 1).replace("-", "", 1).isdigit() else v
    result = {"bundle": bundle, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 1),
              "eval_dir": str(root / "eval")}
    logger.info("demo result: %s", json.dumps(result))
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth -> prepare -> train -> evaluate a bundle on synthetic data")
    p.add_argument("--bundle", default=BUNDLE_NAMES[0], choices=sorted(DEMO_BUNDLES))
    p.add_argument("--bundles-dir", type=Path, default=None,
                   help="folder holding the bundle folders (default: ./bundles of the working directory)")
    p.add_argument("--epochs", type=int, default=None, help="override the bundle's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="seconds-long in-memory ViT training instead")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.toy:
        result = train_demo("softmax_free", seed=args.seed)
        logger.info("toy result: %s", json.dumps(result))
    else:
        from .data.common import DataError

        try:
            result = run_bundle_demo(args.bundle, epochs=args.epochs, seed=args.seed, bundles=args.bundles_dir)
        except (FolderNotOwned, DataError, BundleError) as e:  # one line naming the folder / file, no traceback
            logger.debug("demo stopped", exc_info=True)
            logger.error("demo stopped: %s", e)
            return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
