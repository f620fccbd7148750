#!/usr/bin/env bash
# One command, about 5-8 minutes on one GPU: every CUDA path samsp has (bench/gpu_check.py says
# which), figures to bench/results/results_gpu.json (and $OUT/results_gpu.json when OUT is set).
#   bench/gpu_check.sh                 # all parts
#   bench/gpu_check.sh --parts env,encoder
# Uses .venv (make venv) when present, else the python3 on PATH (a machine with torch already).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
exec timeout 480 "$PY" -m bench.gpu_check "$@"
