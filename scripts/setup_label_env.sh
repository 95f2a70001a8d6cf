#!/usr/bin/env bash
# Build the MONAI Label virtual environment (.venv-label) once; a no-op when it is complete.
#   bash scripts/setup_label_env.sh
# MONAI Label 0.8.5 needs its own pins (see docs/monailabel.md): torch 2.14.1 with a
# torchvision that imports, monai 1.5.2 (1.6's Spacingd fails on MONAI Label's string
# ``image_path`` key), pydicom 2.4.5 (pydicom 3 breaks pydicom-seg; 2.4.5 has the DICOMDIR path-traversal
# fix of CVE-2026-32711), pillow >= 12.3.0 (decompression-bomb fixes), numpy 1.26. See docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LABEL_VENV:-.venv-label}
STAMP="$VENV/.monai_ext_label_env_ok"
SECURE_PINS=(pydicom==2.4.5 "pillow>=12.3.0")
if [ -f "$STAMP" ]; then
    # an environment built before the security floors gets the fixed pydicom / pillow, nothing else changes
    if ! "$VENV/bin/python" - <<'PY'
import sys
from importlib.metadata import version
from packaging.version import Version
sys.exit(0 if version("pydicom") == "2.4.5" and Version(version("pillow")) >= Version("12.3.0") else 1)
PY
    then
        echo "updating $VENV to ${SECURE_PINS[*]}"
        "$VENV/bin/python" -m pip install -q "${SECURE_PINS[@]}"
    fi
    echo "MONAI Label environment ready: $VENV ($(cat "$STAMP"))"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.14.1 torchvision==0.29.1
$PIP install -q monailabel==0.8.5 monai==1.5.2 "${SECURE_PINS[@]}" "dicomweb-client[gcp]==0.59.1" pynetdicom==2.0.2
# monai_ext itself, without letting pip touch the pinned stack ...
$PIP install -q -e . --no-deps
# ... plus those runtime dependencies of monai_ext (pyproject.toml) that are not installed at all; ones
# MONAI Label already brings are left as they are (e.g. its jsonschema 3.2), and numpy stays pinned.
missing=$("$VENV/bin/python" - <<'PY'
import re, tomllib
from importlib.metadata import PackageNotFoundError, version
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
out = []
for spec in deps:
    name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        out.append(spec)
print(" ".join(f"'{s}'" for s in out))
PY
)
if [ -n "$missing" ]; then
    echo "installing monai_ext dependencies missing from $VENV: $missing"
    eval "$PIP install -q $missing numpy==$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
fi
versions=$("$VENV/bin/python" -c 'import numpy, torch, monai, monailabel; print(f"numpy {numpy.__version__} torch {torch.__version__} monai {monai.__version__} monailabel {monailabel.__version__}")')
case "$versions" in
    "numpy 1.26"*) ;;
    *) echo "ERROR: $VENV has $versions; MONAI Label 0.8.5 needs numpy 1.26" >&2; exit 1 ;;
esac
echo "$versions" > "$STAMP"
echo "MONAI Label environment ready: $VENV ($versions)"
