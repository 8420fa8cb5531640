# syntax=docker/dockerfile:1
#
# One image for every moot service. The service is chosen by the container command:
#   python -m moot_gateway         (HTTP API, MOOT_HTTP_PORT 8000)
#   python -m moot_member_worker   (model calls via litellm, 8001)
#   python -m moot_arbiter         (folds results into run state, 8002)
#   python -m moot_recorder        (writes run events to Postgres, 8003)
#   moot-test-model-server         (OpenAI-compatible test model; local/dev only)
#
# Build:  docker build -t ghcr.io/moot/moot:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim

# --- build stage: install the project into a virtualenv -------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore is an allow-list: only pyproject.toml, README.md, shared/ and services/
# reach this COPY, so local virtualenvs, caches and tests never end up in the image.
COPY . .
# A regular (non-editable) install: the runtime stage takes /opt/venv only, not /src.
RUN pip install .

# --- runtime stage ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

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
    HOME=/home/moot

WORKDIR /home/moot
USER 10001:10001

EXPOSE 8000 8001 8002 8003 9000

# Default to the gateway; every other service overrides the command.
CMD ["python", "-m", "moot_gateway"]
