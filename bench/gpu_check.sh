#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py), from the source tree, with the image's Python packages and the wheels
# in .gpu-wheels/ (`make gpu-wheels`). On the GPU machine:    bench/gpu_check.sh --out OUT
# Rehearsed on the CPU (.ci/run):  PYTHON=.venv/bin/python bench/gpu_check.sh --device cpu --check-imports
# Nothing it runs reaches the network; its time limits are bench/gpu_check.py's (--budget, default 295 s).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false
# The wheels are the image's Python's (3.12): another Python (the CPU rehearsal's venv, which has every
# package) leaves them out; --check-imports still counts them as carried.
if compgen -G ".gpu-wheels/*.whl" >/dev/null && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu-wheels/*.whl \
        || { echo "gpu_check.sh: installing .gpu-wheels/ failed" >&2; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$site"
fi
# A hard stop a little past the budget, in case the driver itself hangs.
exec timeout -k 10 400 "$PY" bench/gpu_check.py "$@"
