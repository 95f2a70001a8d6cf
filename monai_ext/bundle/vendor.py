"""Vendoring for ``monai-ext package``: the monai_ext code a bundle's configs need, as the bundle's ``scripts``.

A model-zoo bundle carries its custom code in ``scripts/`` and its configs import ``scripts...``. The modules
needed are found by following imports: every ``monai_ext.…`` name in the configs (``_target_``, ``$import`` and
``$`` expressions) is resolved to the module defining it, then each module's imports (also those inside
functions, and ``"monai_ext.x"`` strings) are followed, parent packages included; a name re-exported or loaded
lazily by a package (``from monai_ext.utils import X``) resolves to the module that defines it. The modules are
copied with ``monai_ext`` rewritten to ``scripts``; the third-party distributions they import become the
bundle's requirements, with the version specifiers monai_ext itself declares (its security floors included).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from monai_ext.bundle.registry import BundleError

logger = logging.getLogger(__name__)

__all__ = ["PACKAGE", "VENDOR", "config_references", "distribution_specs", "leftover_references", "module_closure",
           "rewrite_config", "rewrite_source", "vendor_modules"]

PACKAGE = "monai_ext"
#: the package name of the vendored code inside a bundle (model-zoo convention)
VENDOR = "scripts"
#: distributions a bundle's metadata names in their own fields (monai_version, pytorch_version, numpy_version)
OWN_FIELDS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
_REF = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_]\w*)*")
_DOTTED = re.compile(rf"\b{PACKAGE}(?=\.[A-Za-z_])")
_STATEMENT = re.compile(rf"^(\s*)(from|import)\s+{PACKAGE}\b", re.MULTILINE)
_CONFIG_IMPORT = re.compile(rf"(\$\s*import\s+){PACKAGE}\b")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_references(config_dir: Path) -> dict[str, list[str]]:
    """Every ``monai_ext[.name…]`` written in the config files of ``config_dir``, with the files naming it."""
    refs: dict[str, list[str]] = {}
    for path in sorted(config_dir.iterdir()):
        if path.suffix in CONFIG_SUFFIXES and path.is_file():
            for ref in sorted(set(_REF.findall(path.read_text()))):
                refs.setdefault(ref, []).append(path.name)
    return refs


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolve_reference(dotted: str, where: str = "") -> set[str]:
    """The monai_ext modules ``dotted`` needs: its longest importable prefix, and the module defining each
    attribute after it (``monai_ext.reports.EvaluationReport`` -> ``monai_ext.reports``,
    ``monai_ext.reports.handler``)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if not _is_module(name):
            continue
        found = {name}
        obj = importlib.import_module(name)
        for attr in parts[i:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise BundleError(f"{where or dotted}: {dotted} does not exist ({name} has no {attr!r})") from None
            module = getattr(obj, "__module__", None)
            if isinstance(module, str) and module.split(".")[0] == PACKAGE:
                found.add(module)
        return found
    raise BundleError(f"{where or dotted}: {dotted} is no importable module")


def _imports(module: str, source: Path) -> tuple[set[str], set[str]]:
    """(monai_ext names, third-party top-level modules) imported anywhere in ``source``."""
    tree = ast.parse(source.read_text(), filename=str(source))
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] == PACKAGE else theirs).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == PACKAGE:
                ours.add(name)
                ours.update(f"{name}.{alias.name}" for alias in node.names if alias.name != "*")
            else:
                theirs.add(name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _REF.fullmatch(node.value) \
                and "." in node.value:
            ours.add(node.value)
    return ours, {t.split(".")[0] for t in theirs if t}


def module_closure(references: Iterable[str]) -> tuple[list[str], dict[str, set[str]]]:
    """The monai_ext modules ``references`` need, transitively (sorted), and the third-party top-level modules
    they import (standard library excluded), each with the monai_ext modules importing it."""
    todo: set[str] = set()
    for ref in references:
        todo |= resolve_reference(ref)
    done: set[str] = set()
    third: dict[str, set[str]] = {}
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        parts = module.split(".")
        todo.update(".".join(parts[:i]) for i in range(1, len(parts)))
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise BundleError(f"{module}: no Python source to vendor")
        ours, theirs = _imports(module, Path(spec.origin))
        for name in ours:
            todo |= resolve_reference(name, where=spec.origin) - done
        for name in theirs - set(sys.stdlib_module_names) - {"__future__"}:
            third.setdefault(name, set()).add(module)
    return sorted(done), third


def monai_run_imports(config_dir: Path) -> set[str]:
    """Modules MONAI itself imports only optionally but a run of these configs needs: ``fire`` (``python -m
    monai.bundle``), ``yaml`` (YAML configs) and ``tensorboard`` (a TensorBoard handler in a config)."""
    needs = {"fire"}
    for path in config_dir.iterdir():
        if path.suffix in (".yaml", ".yml"):
            needs.add("yaml")
        if path.suffix in CONFIG_SUFFIXES and "TensorBoard" in path.read_text():
            needs.add("tensorboard")
    return needs


def rewrite_source(text: str) -> str:
    """``monai_ext`` -> ``scripts`` in import statements and dotted names (prose such as "monai_ext developers"
    stays)."""
    return _STATEMENT.sub(rf"\1\2 {VENDOR}", _DOTTED.sub(VENDOR, text))


def rewrite_config(text: str) -> str:
    """A config's ``monai_ext.x`` targets / expressions and ``$import monai_ext`` point at ``scripts``."""
    return _CONFIG_IMPORT.sub(rf"\g<1>{VENDOR}", _DOTTED.sub(VENDOR, text))


def vendor_modules(modules: Iterable[str], dest: Path, version: str) -> list[Path]:
    """Copy ``modules`` (monai_ext names) into ``dest/scripts/`` rewritten, each with a provenance line; also the
    ``*.json`` / ``*.yaml`` package data next to a vendored package's ``__init__.py``. Returns the files written."""
    written: list[Path] = []
    for module in sorted(modules):
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin)
        rel = Path(*module.split(".")[1:])
        target = dest / VENDOR / (rel / "__init__.py" if source.name == "__init__.py" else rel.with_suffix(".py"))
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = f"{PACKAGE}/{Path(*module.split('.')[1:])}" + ("/__init__.py" if source.name == "__init__.py"
                                                                else ".py")
        head = (f"# Vendored by `monai-ext package` from {PACKAGE} {version} ({origin.replace('//', '/')}), "
                f"imports rewritten to `{VENDOR}`. Apache License 2.0 (LICENSE).\n")
        target.write_text(head + rewrite_source(source.read_text()))
        written.append(target)
        if source.name == "__init__.py":
            for data in sorted(source.parent.iterdir()):
                if data.suffix in (".json", ".yaml") and data.is_file():
                    (target.parent / data.name).write_bytes(data.read_bytes())
                    written.append(target.parent / data.name)
    return written


def leftover_references(root: Path) -> list[str]:
    """Places under ``root`` that still need monai_ext: imports of it in ``*.py`` files, ``"monai_ext.x"`` strings,
    and ``monai_ext.x`` / ``$import monai_ext`` in config files."""
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".py":
            rel = path.relative_to(root).with_suffix("")
            module = ".".join(rel.parts[:-1] if path.name == "__init__.py" else rel.parts)  # e.g. scripts.networks.vit
            ours, _ = _imports(module or VENDOR, path)
            found += [f"{path.relative_to(root)}: {name}" for name in sorted(ours)]
        elif path.suffix in CONFIG_SUFFIXES and path.parent.name == "configs":
            text = path.read_text()
            found += [f"{path.relative_to(root)}: {m.group(0)}" for m in _DOTTED.finditer(text)]
            found += [f"{path.relative_to(root)}: {m.group(0)}" for m in _CONFIG_IMPORT.finditer(text)]
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> dict[str, str]:
    """monai_ext's own runtime requirements: canonical distribution name -> version specifier."""
    out: dict[str, str] = {}
    for line in metadata.requires(PACKAGE) or []:
        if ";" in line:  # an extra's requirement (test tools)
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", line)
        out[_canonical(m.group(1))] = _lower_bound_first(m.group(2).strip().strip("()"))
    return out


def _lower_bound_first(spec: str) -> str:
    """``!=3.0.0,>=2.4.5`` -> ``>=2.4.5,!=3.0.0``: the model zoo's ``get_bundle_requirements.py`` takes a value
    starting with ``<``, ``>`` or ``=`` as a specifier and puts ``==`` before anything else."""
    order = {">": 0, "<": 1, "=": 2, "~": 3, "!": 4}
    clauses = [c.strip() for c in spec.split(",") if c.strip()]
    return ",".join(sorted(clauses, key=lambda c: order.get(c[0], 5)))


def distribution_specs(imports: Iterable[str], listed: dict[str, str]) -> dict[str, str]:
    """``required_packages_version`` of a packaged bundle: the distributions providing ``imports`` (top-level
    module names) and those ``listed`` in the bundle's metadata, less monai_ext and the distributions with their
    own metadata field. Each gets monai_ext's declared specifier (a range such as ``>=12.3.0``: installable on
    every Python monai_ext supports, unlike a pin of this machine's release); one monai_ext does not declare keeps
    the metadata's version."""
    providers = metadata.packages_distributions()
    declared = declared_requirements()
    names = {_canonical(k): k for k in listed}
    for module in sorted(imports):
        dists = providers.get(module)
        if not dists:
            raise BundleError(f"the vendored code imports {module!r}, which no installed distribution provides; "
                              f"install it (it is a requirement of the packaged bundle)")
        names.setdefault(_canonical(dists[0]), dists[0])
    out: dict[str, str] = {}
    for canon, name in sorted(names.items()):
        if canon == _canonical(PACKAGE) or canon in OWN_FIELDS:
            continue
        if canon in declared:
            out[canon] = declared[canon] or listed.get(name, "")
        elif name in listed:
            out[canon] = listed[name]
        else:
            raise BundleError(f"the vendored code needs {name}, which {PACKAGE} does not declare in its requirements")
        if not out[canon]:
            raise BundleError(f"{name}: no version or specifier known for the packaged bundle's requirements")
    return out
