# tickvault's image: the ingest and the HTTP API (`tickvault run`), and, as the `jupyter`
# target, the analysis notebooks. docker-compose.yml builds both next to TimescaleDB.
# The base moves only when this line does: bump the patch version on purpose.
FROM python:3.11.14-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TICKVAULT_DATA_DIR=/data \
    TICKVAULT_API_HOST=0.0.0.0 \
    TICKVAULT_API_PORT=8000

# Unprivileged, and /data made here so that a named volume mounted on it starts out ours:
# the ingest journal lives there and must survive the container.
RUN useradd --create-home --uid 1000 tickvault \
    && install -d -o tickvault -g tickvault /data

WORKDIR /app
# Dependencies from the lock alone: exact versions, every file checked against its hash,
# wheels only (nothing is built, no setup code runs). requirements.lock is compiled from
# pyproject.toml; it also pins setuptools and Cython, which build tickvault below.
COPY requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock \
    && pip check

# tickvault itself, built where a C compiler is: the compiled frame decoder
# (ingest/upstox/_fastdecode.pyx) and COPY encoder (store/_copyrows.pyx) need gcc at build
# time only, so the image that runs does not carry it; npm likewise fetches the page's chart
# library here. Installed under /opt/tickvault, which the app stage copies whole.
FROM base AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev npm \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY core core
COPY ingest ingest
COPY store store
COPY api api
COPY tickvault tickvault
COPY sql sql
# The page's chart library from its lock (exact versions, each file checked against its hash),
# as `make setup` installs it: into api/vendor/node_modules, which the install below packages.
RUN npm ci --prefix api/vendor --ignore-scripts --no-audit --no-fund --loglevel=error
# A regular install: sql/ goes into site-packages as the package store.sql.
# --no-deps: everything it needs came
# from the lock; --no-build-isolation: built with the locked setuptools and Cython, not
# fetched ones. PIP_PREFIX puts tickvault alone (its packages, the compiled decoder and the
# `tickvault` command) under /opt/tickvault, laid out as /usr/local is.
ENV PIP_PREFIX=/opt/tickvault
RUN pip install --no-deps --no-build-isolation .
# Refuse an image on the Python decoder or COPY writer where this stage had a compiler: the
# build said why. (-P: not the source tree in /app, which has nothing compiled, but what was
# installed.)
RUN PYTHONPATH=/opt/tickvault/lib/python3.11/site-packages python -P -c \
    "from ingest.upstox.decoder import DECODER_IMPLEMENTATION as d; assert d == 'compiled', d; \
from store.ticks import COPY_IMPLEMENTATION as c; assert c == 'compiled', c"

FROM base AS app
COPY --from=build /opt/tickvault /usr/local
COPY notebooks notebooks
COPY deploy deploy

USER tickvault
EXPOSE 8000
# Refuses .env.example's placeholder passwords, then runs the command.
ENTRYPOINT ["sh", "/app/deploy/refuse-placeholders.sh"]
CMD ["tickvault", "run"]

# `docker compose --profile jupyter up`: JupyterLab on the same code and database settings,
# its packages from their own lock (deploy/jupyter.lock, constrained to requirements.lock).
FROM app AS jupyter
USER root
RUN pip install --require-hashes --only-binary=:all: --no-deps -r deploy/jupyter.lock \
    && pip check
USER tickvault
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/app/notebooks"]
