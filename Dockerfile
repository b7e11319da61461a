# syntax=docker/dockerfile:1
# The spendgate image: `docker build -t spendgate:0.1.0 .` from the repository root.
#
#   docker run -p 8080:8080 spendgate:0.1.0      # embedded PostgreSQL and Valkey in the
#                                                # data dir: a trial, nothing shared
#   docker run -p 8080:8080 -e SPENDGATE_DATABASE_URL=... -e SPENDGATE_REDIS_URL=... \
#       -e SPENDGATE_ADMIN_TOKEN=... spendgate:0.1.0
#
# deploy/compose.yml and deploy/kubernetes/ run it as several replicas. How this file is
# checked where no Docker engine runs: docs/SCALING.md, "The image".

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a wheel of the project, installed with its dependencies into a venv ---------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/spendgate
WORKDIR /src
# Only what the wheel is built from; .dockerignore keeps the rest out of the context.
COPY pyproject.toml README.md ./
COPY spendgate ./spendgate
RUN /opt/spendgate/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/spendgate/bin/pip install /wheels/spendgate-*.whl \
    && /opt/spendgate/bin/python -m compileall -q /opt/spendgate/lib

# --- runtime: the venv on a clean slim image, run as an unprivileged user -----------------
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 spendgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/spendgate \
        --shell /usr/sbin/nologin spendgate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/spendgate
COPY --from=builder /opt/spendgate /opt/spendgate
# HOST: listen on every interface of the container (the default, 127.0.0.1, is the
# container's own loopback). DATA_DIR: the embedded servers and the generated admin token,
# used only when the URLs and the token are not set.
ENV PATH=/opt/spendgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPENDGATE_HOST=0.0.0.0 \
    SPENDGATE_PORT=8080 \
    SPENDGATE_DATA_DIR=/var/lib/spendgate
USER 10001:10001
WORKDIR /var/lib/spendgate
EXPOSE ${SPENDGATE_PORT}
# The slim image has no curl: the standard library asks /healthz (any error exits non-zero).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SPENDGATE_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["spendgate"]
CMD ["serve"]
