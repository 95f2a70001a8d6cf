"""``monai-ext report compare|build``.

Examples::

    # one table across evaluation folders (AUROC by attention type; APF vs UNETR tokens, time, Dice)
    monai-ext report compare eval_softmax eval_sima eval_softmax_free --out docs/table2.md

    # a report from per-case predictions (e.g. another model's), same outputs as evaluate.yaml
    monai-ext report build --task classification --cases test.csv --validation-cases val.csv --out eval_x
    monai-ext report build --task segmentation --cases per_case.csv --out eval_y
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_table

    text = compare_table(args.dirs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        logger.info("comparison written to %s", args.out)
    else:
        print(text, end="")
    return 0


def _build(args: argparse.Namespace) -> int:
    from .provenance import command_line, file_record, git_info, package_versions
    from .writer import read_cases_csv, write_report

    records, names = read_cases_csv(args.cases, args.task)
    validation = None
    if args.validation_cases is not None:
        if args.task != "classification":
            raise SystemExit("--validation-cases is for classification only")
        validation, _ = read_cases_csv(args.validation_cases, args.task)
    prov = {
        "run": {"name": args.name or args.out.name, "task": args.task, "split": args.split, "variant": {},
                "n_cases": len(records)},
        "git": git_info(), "packages": package_versions(), "seeds": {"bootstrap": args.seed},
        "files": {"per_case": file_record(args.cases), "validation_per_case": file_record(args.validation_cases)},
        "command": command_line(),
    }
    threshold, source = None, None
    if args.threshold is not None:
        from .threshold import load_threshold

        threshold, source = load_threshold(float(args.threshold) if _is_number(args.threshold) else args.threshold)
    write_report(args.out, args.task, records, prov, class_names=args.class_names or names,
                 validation_records=validation, threshold=threshold, threshold_source=source,
                 n_bootstrap=args.n_bootstrap, seed=args.seed, ci_level=args.ci_level)
    logger.info("report written to %s", args.out)
    return 0


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="evaluation reports: compare folders, build from per-case predictions",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = p.add_subparsers(dest="report_command", metavar="ACTION")
    rsub.required = True

    c = rsub.add_parser("compare", help="one markdown table across evaluation folders")
    c.add_argument("dirs", nargs="+", type=Path, help="evaluation folders (each with metrics.json)")
    c.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print)")
    c.set_defaults(func=_compare)

    b = rsub.add_parser("build", help="write an evaluation folder from a per-case CSV")
    b.add_argument("--task", choices=("classification", "segmentation"), required=True)
    b.add_argument("--cases", type=Path, required=True,
                   help="test per-case CSV: case_id,label,probability (classification) or case_id,dice_<class>...,"
                        "[hd95_<class>...] (segmentation)")
    b.add_argument("--validation-cases", type=Path, default=None,
                   help="validation per-case CSV: the Youden threshold is chosen on it")
    b.add_argument("--threshold", default=None, help="a second threshold instead: a number or a JSON file")
    b.add_argument("--out", type=Path, required=True, help="output folder")
    b.add_argument("--name", default=None, help="run name (default: the output folder's name)")
    b.add_argument("--split", default="test")
    b.add_argument("--class-names", nargs="+", default=None)
    b.add_argument("--n-bootstrap", type=int, default=1000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--ci-level", type=float, default=0.95)
    b.set_defaults(func=_build)
