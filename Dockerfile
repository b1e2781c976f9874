# syntax=docker/dockerfile:1
#
# The ML backend (`python -m backend`) and the Label Studio plugin (`python -m plugin`).
#
#   docker build -t zeroguide-backend .                       # CPU base image (default)
#   docker build --build-arg BASE_IMAGE=<image with python3.11 or apt python3.11> -t ... .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t ... .
#   make docker-test                                          # build, run and check it (scripts/docker-test.sh)
#
# Without an image registry, make a Debian base here first (scripts/docker-local-base.sh) and
# build with `--network host --build-arg BASE_IMAGE=zeroguide-base:bookworm`.
#
# Only requirements.txt (the service) is installed; the test tools are in requirements-dev.txt.
# requirements.txt pins PyPI's torch, which bundles the CUDA runtime: the default image uses
# a GPU when run with `--gpus all` (NVIDIA container toolkit) and the CPU otherwise, so a CUDA
# base image is optional. TORCH_INDEX_URL installs torch/torchvision from another index first
# (e.g. PyTorch's CPU-only wheels, ~2 GB smaller); the pins in requirements.txt still apply.
#
# No weights are baked in and nothing is downloaded at build time: mount them at /weights
# (see docs/label-studio.md). MODEL_DIR (/data/model_dir) is a volume: stored annotations,
# checkpoints, caches; it must be writable by uid 10001, else /health answers 503
# (docs/label-studio.md: a bind mount needs `chown 10001:10001 DIR`).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
ARG TORCH_INDEX_URL=""
# pydensecrf2 has no wheel on PyPI: it is compiled, so this stage has a C++ compiler.
# ca-certificates: pip trusts the system's CAs (and, on a local base, the machine's own CAs).
RUN set -eux; \
    apt-get update; \
    if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev; \
    fi; \
    apt-get install -y --no-install-recommends build-essential ca-certificates; \
    rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /tmp/requirements.txt
RUN set -eux; \
    pip install --upgrade pip; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" \
            "$(grep -E '^torch==' /tmp/requirements.txt)" "$(grep -E '^torchvision==' /tmp/requirements.txt)"; \
    fi; \
    pip install -r /tmp/requirements.txt; \
    pip check

# -------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# No GUI libraries: OpenCV is opencv-python-headless, which needs neither libGL nor GLib.
RUN set -eux; \
    if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3.11; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --create-home --uid 10001 --shell /usr/sbin/nologin app; \
    mkdir -p /data/model_dir /weights; \
    chown app:app /data/model_dir
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY backend /app/backend
COPY plugin /app/plugin
COPY label_config.xml pyproject.toml /app/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=9090 \
    MODEL_PRESET=cpu \
    MODEL_DIR=/data/model_dir \
    WEIGHTS_DIR=/weights \
    HF_HOME=/weights/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_WAIT_POLICY=PASSIVE

VOLUME ["/data/model_dir"]
EXPOSE 9090
USER app
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '9090')}/health\", timeout=4)"]
CMD ["python", "-m", "backend"]
