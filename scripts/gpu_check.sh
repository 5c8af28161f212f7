#!/usr/bin/env bash
# The GPU check of issue #31 (docs/scale.md): one command, <= 8 minutes on one GPU, one table,
# exit 1 on any mismatch. Build the code corpus first (`icl-lab data build code`) where the
# machine has no network, or carry ~/.cache/icl-lab along, or natural-2l's row says "skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" scripts/gpu_check.py --device "${DEVICE:-cuda}" "$@"
