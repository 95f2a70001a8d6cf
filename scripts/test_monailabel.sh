#!/usr/bin/env bash
# MONAI Label check of the four bundles (separate from the pytest suite; see docs/monailabel.md).
#   bash scripts/test_monailabel.sh                  # everything in a new private temporary folder
#   WORK=DIR bash scripts/test_monailabel.sh         # in DIR, reusing data/weights of a previous run there
#   WORK=DIR bash scripts/test_monailabel.sh --fresh # DIR emptied first (only if the check created it)
# 1. builds the MONAI Label environment .venv-label once (scripts/setup_label_env.sh);
# 2. runs scripts/monailabel_check.py with it: 1-epoch training of each bundle on synthetic data, the
#    bundle's own inference on several images per bundle (BTCV: also a CT stored LPS), then for MONAI Label's
#    stock monaibundle app (unmodified) and for `monai-ext label-app` a real `monailabel start_server` on
#    127.0.0.1 (offline), POST /infer/<bundle> for every image with each answer compared with the bundle's own
#    (labels: 100% of voxels; scores: 1e-6), server stopped by its PID. Exit status 0 = all passed.
#    Options of monailabel_check.py pass through, e.g. --app stock, --bundle NAME, --images N.
# Environment: WORK (default: a new private temporary folder; give it again to reuse a previous run's data
# and weights; --fresh empties only a folder the check created), PORT (default: a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_label_env.sh
VENV=${LABEL_VENV:-.venv-label}
args=()
if [ -n "${WORK:-}" ]; then args+=(--work "$WORK"); fi
if [ -n "${PORT:-}" ]; then args+=(--port "$PORT"); fi
exec "$VENV/bin/python" scripts/monailabel_check.py ${args[@]+"${args[@]}"} "$@"
