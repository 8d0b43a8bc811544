#!/usr/bin/env bash
# GPU smoke test, sized for one GPU in <= 10 minutes (scripts/gpu_smoke.py says what it checks).
#   bash scripts/gpu_smoke.sh                          # full mode where vLLM and Ray import, else reduced
#   bash scripts/gpu_smoke.sh --mode reduced           # torch + DeepSpeed only (no vLLM, no Ray)
#   bash scripts/gpu_smoke.sh --device cpu             # the reduced mode's dry path on CPU (gloo, no IPC)
# Writes smoke/report.json (--out DIR to change); exits 1 when a check fails, 124 past 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning"
exec timeout "${SMOKE_TIMEOUT_S:-600}" "$PY" scripts/gpu_smoke.py "$@"
