"""The module map of docs/architecture.md, checked: which package may import which, and module sizes.

Imports are read from the source (also those inside functions), so a lazy import that breaks the layering is
caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import monai_ext

PKG = Path(monai_ext.__file__).parent

#: package -> the monai_ext packages it may import (besides itself); docs/architecture.md, "Modules"
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "networks": {"utils"},
    "transforms": {"utils"},
    "data": {"utils"},
    "inferers": {"transforms", "utils"},
    "metrics": {"transforms", "utils"},
    "reports": {"metrics", "transforms", "utils"},
    "workflows": {"data", "inferers", "transforms", "utils", "wsi"},
    "bundle": {"utils"},
    "bench": {"data", "networks", "transforms", "utils", "wsi"},
    "protocols": {"reports", "utils", "workflows"},
    "features": {"data", "networks", "utils"},
    "wsi": {"data", "transforms", "utils"},
}
#: modules allowed over MAX_LINES, with the reason
LARGE: dict[str, str] = {}
MAX_LINES = 500


def _package_of(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0].removesuffix(".py")


def _imports(path: Path, root: Path = PKG) -> set[str]:
    """Top-level ``monai_ext`` packages imported anywhere in ``path`` (a module under ``root``)."""
    pkg = ".".join(("monai_ext", *path.relative_to(root).parts[:-1]))
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                names = [".".join(parts + ([node.module] if node.module else []))]
                if not node.module:  # ``from . import x``: x may be a sub-package
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("monai_ext.") and len(n.split(".")) > 1}
    return out


def test_packages_import_only_what_the_map_allows() -> None:
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        own = _package_of(path)
        if own not in ALLOWED:
            continue
        for dep in sorted(_imports(path) - {own}):
            if dep not in ALLOWED[own]:
                problems.append(f"{path.relative_to(PKG)} imports monai_ext.{dep}")
    assert not problems, "layering broken (docs/architecture.md):\n" + "\n".join(problems)


def test_nothing_imports_the_entry_points() -> None:
    for path in sorted(PKG.rglob("*.py")):
        if path.name in ("cli.py", "demo.py") and path.parent == PKG:
            continue
        bad = _imports(path) & {"cli", "demo"}
        assert not bad, f"{path.relative_to(PKG)} imports the entry point(s) {bad}"


def test_every_package_is_on_the_map() -> None:
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED), f"add {packages - set(ALLOWED)} to docs/architecture.md and ALLOWED"
    text = (PKG.parent / "docs" / "architecture.md").read_text()
    assert all(f"`{p}/`" in text for p in packages)


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(big) <= set(LARGE), f"modules over {MAX_LINES} lines: {big}; split them (docs/architecture.md)"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The import reader itself: a lazy, relative import of transforms from networks is found."""
    fake = tmp_path / "monai_ext" / "networks" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import torch\n\ndef f():\n    from ..transforms import AdaptivePatch\n    from . import vit\n"
                    "    from monai_ext.data.common import DataError\n    return AdaptivePatch, vit, DataError\n")
    assert _imports(fake, tmp_path / "monai_ext") == {"transforms", "networks", "data"}
