#!/usr/bin/env bash
# MONAI Label check of the four bundles (separate from the pytest suite; see docs/monailabel.md).
#   bash scripts/test_monailabel.sh            # reuses data/weights of a previous run in $WORK
#   bash scripts/test_monailabel.sh --fresh    # synthesize, train, assemble and serve from scratch
# 1. builds the MONAI Label environment .venv-label once (scripts/setup_label_env.sh);
# 2. runs scripts/monailabel_check.py with it: 1-epoch training of each bundle on synthetic data,
#    `monai-ext label-app`, a real `monailabel start_server` on 127.0.0.1 (offline), POST /infer/<bundle>
#    for every bundle with answers checked, server stopped by its PID. Exit status 0 = all passed.
# Environment: WORK (default /tmp/monai_ext_label_check), PORT (default: a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_label_env.sh
VENV=${LABEL_VENV:-.venv-label}
args=(--work "${WORK:-/tmp/monai_ext_label_check}")
if [ -n "${PORT:-}" ]; then args+=(--port "$PORT"); fi
exec "$VENV/bin/python" scripts/monailabel_check.py "${args[@]}" "$@"
