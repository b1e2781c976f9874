# Label Studio from PyPI on a Debian base: a stand-in for heartexlabs/label-studio where no image
# registry is reachable. scripts/docker-test.sh builds it when that image cannot be had; use it
# with docker-compose.yml through LABEL_STUDIO_IMAGE:
#
#   docker build --network host --build-arg BASE_IMAGE=zeroguide-base:bookworm \
#       -t zeroguide-label-studio:1.23.2 -f scripts/docker/label-studio.Dockerfile scripts/docker
#   LABEL_STUDIO_IMAGE=zeroguide-label-studio:1.23.2 docker-compose up -d
#
# Same data folder (/label-studio/data, SQLite) and port (8080) as the official image; the
# compose file's variables (LABEL_STUDIO_USERNAME, ..._PASSWORD, ..._USER_TOKEN) work the same.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
ARG LABEL_STUDIO_VERSION=1.23.2
RUN set -eux; \
    apt-get update; \
    if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends python3.11 python3.11-venv; \
    fi; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    python3.11 -m venv /opt/label-studio; \
    /opt/label-studio/bin/pip install --no-cache-dir --disable-pip-version-check "label-studio==${LABEL_STUDIO_VERSION}"; \
    mkdir -p /label-studio/data
ENV PATH=/opt/label-studio/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data \
    DJANGO_DB=sqlite
WORKDIR /label-studio
EXPOSE 8080
CMD ["label-studio", "start", "--no-browser", "--internal-host", "0.0.0.0", "--port", "8080"]
