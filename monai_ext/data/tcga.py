"""TCGA-NSCLC (LUAD vs LUSC) on whole-slide feature sequences: the layout and its preparation.

Raw layout: one feature file per diagnostic slide, as ``monai-ext features`` writes them (CLAM layout,
:mod:`monai_ext.data.wsi_features`), named by the slide's TCGA barcode (and UUID, as in the GDC file name)::

    <raw>/.../h5_files/TCGA-05-4244-01Z-00-DX1.d4ff32cd-38cf-40ea-8213-45c2b100ac01.h5   (or pt_files/*.pt)
    <raw>/labels.csv        optional: slide_id or case_id, label (LUAD | LUSC; also "TCGA-LUAD" / "TCGA-LUSC")

Labels come from ``labels.csv`` (``--labels`` for another file): by slide id (with or without the UUID), else by
the case id (the barcode's first 12 characters, ``TCGA-05-4244``); without a CSV, or for slides it does not
list, from a project folder on the file's path (``TCGA-LUAD/`` or ``LUAD/``, ``TCGA-LUSC/`` or ``LUSC/``).
Class 0 = LUAD, 1 = LUSC. A slide is skipped, with its reason in ``skipped.json``, when its label is unknown or
contradictory, its file unreadable or malformed, or its feature dimension differs from the cohort's (the
most common one); CSV rows without a feature file are listed there too.

Split: by patient (case id), in the paper's proportions 627 / 145 / 270 of 1,042 by default (``--split``),
stratified by subtype; no patient is in two splits (checked). Writes ``<out>/datalist.json`` (``image`` = the
feature file, ``label``, ``slide_id``, ``case_id``, ``num_tiles``, ``feature_dim``) and ``<out>/skipped.json``.

Synthetic data in this layout: :mod:`monai_ext.data.synthetic.tcga`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_ext.data.common import SPLITS, DataError, SkipLog, data_origin, grouped_split, write_datalist
from monai_ext.data.dataset import Option
from monai_ext.data.wsi_features import feature_dim, find_feature_files, slide_id_of

logger = logging.getLogger(__name__)

CLASS_NAMES = ("LUAD", "LUSC")
CLASSES = (0, 1)
REQUIRED_SPLITS = SPLITS
LABELS_NAME = "labels.csv"
#: the paper's split (Sec. 2.2): training 627, validation 145, test 270 of 1,042 slides
PAPER_SPLIT = (627, 145, 270)
BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)

PREPARE_OPTIONS = (
    Option.of("--labels", type=Path, default=None,
              help=f"CSV with slide_id or case_id and label LUAD|LUSC (default: <raw>/{LABELS_NAME} if present, "
                   "else project folders TCGA-LUAD/ TCGA-LUSC/ on the path)"),
    Option.of("--split", type=float, nargs=3, default=list(PAPER_SPLIT), metavar=("TRAIN", "VAL", "TEST"),
              help="patient-level split proportions (default: the paper's 627 145 270)"),
)


def case_id(slide_id: str) -> str:
    """The patient (case) id of a TCGA barcode: its first 12 characters (``TCGA-05-4244``)."""
    if not BARCODE.match(slide_id):
        raise ValueError(f"{slide_id!r} is not a TCGA barcode (TCGA-XX-XXXX...)")
    return slide_id[:12].upper()


def parse_label(value: str) -> int:
    """``LUAD``/``TCGA-LUAD`` -> 0, ``LUSC``/``TCGA-LUSC`` -> 1 (case-insensitive); ``ValueError`` otherwise."""
    v = str(value).strip().upper().removeprefix("TCGA-")
    if v not in CLASS_NAMES:
        raise ValueError(f"unknown label {value!r} (expected one of {', '.join(CLASS_NAMES)})")
    return CLASS_NAMES.index(v)


def read_labels(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``({slide_id: label}, {case_id: label})`` of a labels CSV (raw label strings, checked later per slide)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"unreadable labels CSV ({e})") from e
    if not rows:
        raise DataError(path, "labels CSV has no rows")
    cols = {c.strip().lower(): c for c in rows[0]}
    label_col = next((cols[c] for c in ("label", "subtype", "project", "project_id", "oncotree_code") if c in cols),
                     None)
    if label_col is None or not ({"slide_id", "case_id"} & set(cols)):
        raise DataError(path, f"labels CSV needs a slide_id or case_id column and a label column; has {list(rows[0])}")
    by_slide: dict[str, str] = {}
    by_case: dict[str, str] = {}
    for row in rows:
        lab = (row.get(label_col) or "").strip()
        if "slide_id" in cols and (row.get(cols["slide_id"]) or "").strip():
            by_slide[row[cols["slide_id"]].strip().removesuffix(".svs")] = lab
        elif "case_id" in cols and (row.get(cols["case_id"]) or "").strip():
            by_case[row[cols["case_id"]].strip().upper()] = lab
    return by_slide, by_case


def folder_label(path: Path, raw: Path) -> str | None:
    """A project folder on ``path`` below ``raw`` (``TCGA-LUAD``/``LUAD``, ``TCGA-LUSC``/``LUSC``), or None."""
    found = {p.upper().removeprefix("TCGA-") for p in path.relative_to(raw).parts[:-1]} & set(CLASS_NAMES)
    return found.pop() if len(found) == 1 else (",".join(sorted(found)) if found else None)


def _label_of(sid: str, cid: str, by_slide: dict[str, str], by_case: dict[str, str], folder: str | None) -> int:
    """The class of one slide from the CSV (slide, slide without UUID, case) and/or its folder; ValueError."""
    csv_label = by_slide.get(sid, by_slide.get(sid.split(".")[0], by_case.get(cid)))
    if csv_label is None and folder is None:
        raise ValueError("no label: not in the labels CSV and no TCGA-LUAD / TCGA-LUSC project folder on its path")
    if folder is not None and "," in folder:
        raise ValueError(f"contradictory project folders on its path ({folder})")
    labels = {parse_label(v) for v in (csv_label, folder) if v is not None}
    if len(labels) > 1:
        raise ValueError(f"contradictory labels: {csv_label!r} in the labels CSV, folder {folder}")
    return labels.pop()


def prepare(raw: Path, out: Path, overwrite: bool = False, seed: int = 0, labels: Path | None = None,
            split: Sequence[float] = PAPER_SPLIT, **_: Any) -> dict:
    """The datalist of the feature files under ``raw`` (see the module docstring); returns it."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw folder {raw} not found")
    out.mkdir(parents=True, exist_ok=True)
    files = find_feature_files(raw)
    if not files:
        raise DataError(raw, "no feature files (h5_files/*.h5 or pt_files/*.pt); write them with monai-ext features")
    labels_path = Path(labels) if labels is not None else raw / LABELS_NAME
    if labels is not None and not labels_path.is_file():
        raise FileNotFoundError(f"labels CSV {labels_path} not found")
    by_slide, by_case = read_labels(labels_path) if labels_path.is_file() else ({}, {})
    skips = SkipLog()
    cases: list[dict[str, Any]] = []
    for path in files:
        sid = slide_id_of(path)
        try:
            cid = case_id(sid)
            label = _label_of(sid, cid, by_slide, by_case, folder_label(path, raw))
            n, d = feature_dim(path)
        except (ValueError, DataError) as e:
            skips.add(sid, e if isinstance(e, DataError) else str(e), path)
            continue
        cases.append({"image": os.path.relpath(path, out), "label": label, "slide_id": sid, "case_id": cid,
                      "num_tiles": n, "feature_dim": d})
    dims = Counter(c["feature_dim"] for c in cases)
    if len(dims) > 1:
        dim = dims.most_common(1)[0][0]
        for c in [c for c in cases if c["feature_dim"] != dim]:
            skips.add(c["slide_id"], f"feature dimension {c['feature_dim']} differs from the cohort's {dim} "
                                     f"({dims[dim]} of {len(cases)} slides)", out / c["image"])
        cases = [c for c in cases if c["feature_dim"] == dim]
    found = {slide_id_of(p) for p in files}
    found |= {s.split(".")[0] for s in found}
    found_cases = {s[:12].upper() for s in found}
    for sid in sorted(set(by_slide) - found):
        skips.add(sid, f"listed in {labels_path.name} but no feature file under {raw}", labels_path)
    for cid in sorted(set(by_case) - found_cases):
        skips.add(cid, f"case listed in {labels_path.name} but no feature file of it under {raw}", labels_path)
    assign = stratified_patient_split(cases, split, seed)
    datalist: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for c in cases:
        datalist[assign[c["case_id"]]].append(c)
    check_patient_split(datalist)
    skips.write(out)
    n_class = Counter(CLASS_NAMES[c["label"]] for c in cases)
    logger.info("TCGA-NSCLC: %d slides of %d patients (%s), %d skipped", len(cases), len(assign),
                ", ".join(f"{k} {v}" for k, v in sorted(n_class.items())), len(skips))
    write_datalist(out, datalist, class_names=list(CLASS_NAMES), split_proportions=list(split), split_by="case_id",
                   data_origin=data_origin(raw))
    return datalist


def stratified_patient_split(cases: Sequence[dict[str, Any]], split: Sequence[float] = PAPER_SPLIT,
                             seed: int = 0) -> dict[str, str]:
    """``{case_id: split}``: patients split in the ``split`` proportions separately per subtype (a patient's
    subtype is that of its first slide), so that every split holds both subtypes; all slides of a patient go to
    the same split."""
    first: dict[str, int] = {}
    for c in cases:
        first.setdefault(c["case_id"], int(c["label"]))
    assign: dict[str, str] = {}
    for label in CLASSES:
        assign.update(grouped_split([p for p, lab in first.items() if lab == label], split, seed + 1000 * label))
    return assign


def check_patient_split(datalist: dict[str, list[dict[str, Any]]]) -> None:
    """Raise ``ValueError`` naming the patients found in more than one split."""
    where: dict[str, set[str]] = {}
    for split, items in datalist.items():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "case_id" in item:
                where.setdefault(item["case_id"], set()).add(split)
    shared = sorted(c for c, s in where.items() if len(s) > 1)
    if shared:
        raise ValueError(f"{len(shared)} patient(s) in more than one split: {', '.join(shared[:10])}")
