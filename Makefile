# Everything a fresh machine needs goes through these targets; README.md names `make run`
# (the main job) and `make test` (the tests), and .ci/run calls `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run notebook test lint proto lock bench clean-data

# setup.py builds the compiled decoder and COPY encoder: a change to it or their sources
# rebuilds the install.
$(BIN)/tickvault: pyproject.toml setup.py ingest/upstox/_fastdecode.pyx store/_copyrows.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The Python environment plus the TimescaleDB extension (built from Debian's source once).
setup: $(BIN)/tickvault
	$(BIN)/tickvault db install

run: setup
	$(BIN)/tickvault run

# JupyterLab on notebooks/ (installed on first use); the kernel finds the store `make run` runs.
notebook: setup
	$(BIN)/pip install --quiet -e ".[dev,notebook]"
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# Three workers on two cores: most tests wait on sockets, processes and the database.
test: setup lint
	$(BIN)/pytest -n 3 --dist worksteal

lint: $(BIN)/tickvault
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Regenerate the protobuf module from our own .proto (grpcio-tools pins the protoc version).
proto: $(BIN)/tickvault
	$(BIN)/python -m grpc_tools.protoc -I ingest/upstox/proto --python_out=ingest/upstox/proto \
		--pyi_out=ingest/upstox/proto ingest/upstox/proto/upstox_feed_v3.proto

# The Docker image's hashed locks, from pyproject.toml and deploy/jupyter.in, for CPython 3.11
# on Linux x86_64 (pip-tools in a throwaway venv; add --upgrade to move to newer releases).
LOCK_VENV := /tmp/tickvault-pip-tools
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet pip-tools
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--all-build-deps -o requirements.lock pyproject.toml
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		-c requirements.lock -o deploy/jupyter.lock deploy/jupyter.in

bench: setup
	$(BIN)/python -m bench.run_all

clean-data:
	-$(BIN)/tickvault db stop
	rm -rf .tickvault
