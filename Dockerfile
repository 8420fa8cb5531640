# syntax=docker/dockerfile:1
#
# One image per moot service, built from the same file; SERVICE chooses what is installed:
#   gateway         moot + moot-gateway          python -m moot_gateway        (HTTP API, 8000)
#   member-worker   moot + moot-member-worker    python -m moot_member_worker  (litellm, 8001)
#   arbiter         moot + moot-arbiter          python -m moot_arbiter        (8002)
#   recorder        moot + moot-recorder         python -m moot_recorder       (8003)
#   test-model      moot[runtime] alone          moot-test-model-server        (local/dev only)
# A service's distribution asks for `moot[runtime]` (the bare `moot` is the contracts and the
# client: pydantic and httpx). Only the member worker's image carries litellm; none carries the
# developer's stack (embedded nats-server and Postgres, the local model): those are extras of
# `moot` that no image installs.
# Every image can run the schema migrations: python -m moot.records.migrate (the k8s Job uses
# the recorder's).
#
# Build:  docker build --build-arg SERVICE=gateway -t ghcr.io/moot/moot-gateway:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim
ARG SERVICE=gateway

# --- build stage: install the service's distributions into a virtualenv -------------------
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore is an allow-list: only shared/ and services/ (sources and pyproject files)
# reach this COPY, so local virtualenvs, caches and tests never end up in the image.
COPY . .
# Regular (non-editable) installs: the runtime stage takes /opt/venv only, not /src.
RUN case "$SERVICE" in \
      gateway|member-worker|arbiter|recorder) pip install ./shared "./services/$SERVICE" ;; \
      test-model) pip install "./shared[runtime]" ;; \
      *) echo "unknown SERVICE '$SERVICE'" >&2; exit 1 ;; \
    esac

# --- runtime stage ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE

# Fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify the user without a passwd lookup.
RUN groupadd --system --gid 10001 moot \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/moot --create-home \
        --shell /usr/sbin/nologin moot

COPY --from=build /opt/venv /opt/venv

# LITELLM_LOCAL_MODEL_COST_MAP: use the cost map bundled with litellm instead of fetching it
#   from the internet at import time (slow start, and fails on egress-restricted clusters).
# PYTHONDONTWRITEBYTECODE: pip already compiled the .pyc files; the root filesystem is
#   read-only in Kubernetes, so nothing should try to write next to the sources.
# XDG_CACHE_HOME: any library cache goes to /tmp, the one writable (emptyDir/tmpfs) path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    XDG_CACHE_HOME=/tmp/.cache \
    HOME=/home/moot \
    MOOT_SERVICE=${SERVICE}

WORKDIR /home/moot
USER 10001:10001

EXPOSE 8000 8001 8002 8003 9000

# Compose and Kubernetes name the command; this default runs the image's own service.
CMD ["python", "-m", "moot.runtime.entry"]
