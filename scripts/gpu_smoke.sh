#!/usr/bin/env bash
# GPU smoke test, sized for one GPU in <= 10 minutes (scripts/gpu_smoke.py and gpu_smoke_torch.py say what
# they check).
#   bash scripts/gpu_smoke.sh                          # full where vLLM and Ray import, reduced where DeepSpeed,
#                                                      # transformers and pydantic do, else torch
#   bash scripts/gpu_smoke.sh --mode reduced           # torch + DeepSpeed only (no vLLM, no Ray)
#   bash scripts/gpu_smoke.sh --mode torch             # nothing but CUDA torch and python3, < 4 minutes
#   bash scripts/gpu_smoke.sh --device cpu             # the reduced mode's dry path on CPU (gloo, no IPC)
#   bash scripts/gpu_smoke.sh --mode torch --device cpu  # the torch mode's CPU fallback
# Writes smoke/report.json (--out DIR to change); exits 1 when a check fails, 124 past 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python
  elif command -v python >/dev/null 2>&1; then PY=python
  else PY=python3
  fi
fi
export TOKENIZERS_PARALLELISM=false PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning"
mode=auto prev=""
for arg in "$@"; do
  [ "$prev" = --mode ] && mode=$arg
  case $arg in --mode=*) mode=${arg#--mode=} ;; esac
  prev=$arg
done
script=scripts/gpu_smoke.py
if [ "$mode" = torch ]; then
  script=scripts/gpu_smoke_torch.py
elif [ "$mode" = auto ] && ! "$PY" -c "import deepspeed, transformers, pydantic, yaml" >/dev/null 2>&1; then
  echo "gpu smoke: DeepSpeed, transformers or pydantic does not import: torch-only mode" >&2
  script=scripts/gpu_smoke_torch.py
  set -- --mode torch "$@"
fi
exec timeout "${SMOKE_TIMEOUT_S:-600}" "$PY" "$script" "$@"
