# syntax=docker/dockerfile:1
# Triton on GPU hosts: NVIDIA's own container (NGC), which has the libtorch (pytorch_libtorch) backend the
# nvidia-pytriton wheel lacks, plus a venv at /opt/venv with torch and numpy for the Python backend's model.py
# (the backend stub takes the first python3 on PATH: /opt/venv/bin) and servingbench itself (--no-deps).
# Build from the repository root:
#
#   docker build -f docker/triton-ngc.Dockerfile -t servingbench/triton:ngc .
#   docker build -f docker/triton-ngc.Dockerfile --build-arg TRITON_VERSION=25.10 -t servingbench/triton:ngc .
#
# TRITON_VERSION: an NGC release (<yy.mm>, image nvcr.io/nvidia/tritonserver:<yy.mm>-py3).  It must ship Python
# >= 3.11 (servingbench's floor: releases on Ubuntu 24.04, i.e. 24.xx from late 2024 on / 25.xx, have 3.12), and
# for backend: libtorch a libtorch able to load TorchScript saved by the lock's torch.
# TORCH_INDEX_URL: empty = PyPI's default torch build (CUDA on Linux x86_64); or a PyTorch CUDA index.
# TRITON_SERVER_ROOT tells servingbench.runtime.containers to run this image's tritonserver, backends and caches in place of
# the wheel's paths in the harness's command line (containers.use_triton_root).
ARG TRITON_VERSION=25.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

ARG TORCH_INDEX_URL=
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN PYTHONPATH=/build/src python3 -m servingbench.runtime.isolation create triton --runtime-only \
        --venv /opt/venv --lock requirements.lock --torch-index-url "${TORCH_INDEX_URL}" \
        --source install --project /build \
    && rm -rf /build /root/.cache

ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    TRITON_SERVER_ROOT=/opt/tritonserver \
    SERVINGBENCH_FRAMEWORK=triton
WORKDIR /tmp
# The NGC entrypoint (/opt/nvidia/nvidia_entrypoint.sh) stays: it execs the command it is given.
CMD ["python", "-m", "servingbench.runtime.containers", "--help"]
