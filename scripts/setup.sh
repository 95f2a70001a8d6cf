#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh test     # + test dependencies
# torch is pinned to the CPU wheel this machine provides (torch==2.13.0); on a GPU machine,
# install the CUDA build of torch first (or set TORCH_SPEC) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
.venv/bin/python -m pip install -q -e ".${extra}"
if [ -n "$extra" ]; then
    # timm: the XCA test runs timm's own XCiT attention code. Without its dependencies: timm pulls torchvision,
    # whose PyPI build needs a CUDA torch (it would replace the CPU torch, or fail to import next to it).
    .venv/bin/python -m pip install -q --no-deps "timm>=1.0,<2"
fi
echo "environment ready: $(.venv/bin/python -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)')"
