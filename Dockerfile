# tickvault's image: the ingest and the HTTP API (`tickvault run`), and, as the `jupyter`
# target, the analysis notebooks. docker-compose.yml builds both next to TimescaleDB.
FROM python:3.11-slim AS app

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
COPY pyproject.toml README.md ./
COPY ingest ingest
COPY api api
COPY tickvault tickvault
COPY sql sql
COPY notebooks notebooks
# Installed in place (-e): the migrations are read from sql/ next to the packages, which a
# regular install into site-packages would leave behind.
RUN pip install -e .

USER tickvault
EXPOSE 8000
CMD ["tickvault", "run"]

# `docker compose --profile jupyter up`: JupyterLab on the same code and database settings.
FROM app AS jupyter
USER root
RUN pip install "jupyterlab>=4.2,<5" "matplotlib>=3.9,<3.12"
USER tickvault
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/app/notebooks"]
