# syntax=docker/dockerfile:1
# One servingbench image per framework: python:3.11-slim and a venv at /opt/venv holding torch, numpy, the
# framework's pins from requirements.lock (built by the same helper as `servingbench isolate FRAMEWORK`,
# servingbench/runtime/isolation.py) and servingbench itself (--no-deps).  Build from the repository root:
#
#   docker build -f docker/servingbench.Dockerfile --build-arg FRAMEWORK=litserve -t servingbench/litserve:cpu .
#   docker build -f docker/servingbench.Dockerfile --build-arg FRAMEWORK=litserve \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t servingbench/litserve:cuda .
#
# FRAMEWORK: litserve | mosec | mlserver | triton | rayserve | mlflow | fastapi  (triton: the nvidia-pytriton wheel's
# tritonserver with the Python backend; on GPU hosts see triton-ngc.Dockerfile for NVIDIA's own container).
# TORCH_INDEX_URL: the PyTorch index for the torch build (CPU by default; a CUDA index for GPU hosts).
# The images run as any user (the harness passes --user uid:gid); nothing under /opt/venv is written at run time.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG FRAMEWORK
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN test -n "${FRAMEWORK}" || { echo "--build-arg FRAMEWORK=<litserve|mosec|mlserver|triton|rayserve|mlflow|fastapi> is required" >&2; exit 1; }

WORKDIR /build
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN PYTHONPATH=/build/src python -m servingbench.runtime.isolation create "${FRAMEWORK}" \
        --venv /opt/venv --lock requirements.lock --torch-index-url "${TORCH_INDEX_URL}" \
        --source install --project /build \
    && rm -rf /build /root/.cache

ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    SERVINGBENCH_FRAMEWORK=${FRAMEWORK}
WORKDIR /tmp
# No ENTRYPOINT: `runtime: docker` runs the harness's own command line (docker run ... IMAGE /opt/venv/bin/python ...),
# and docker/compose.yaml starts a generated deployment with `python -m servingbench.runtime.containers serve WORKDIR`.
CMD ["python", "-m", "servingbench.runtime.containers", "--help"]
