# Everything a fresh machine needs goes through these targets; README.md names `make run`
# (the main job) and `make test` (the tests), and .ci/run calls `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test lint proto bench clean-data

$(BIN)/tickvault: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The Python environment plus the TimescaleDB extension (built from Debian's source once).
setup: $(BIN)/tickvault
	$(BIN)/tickvault db install

run: setup
	$(BIN)/tickvault run

test: setup lint
	$(BIN)/pytest

lint: $(BIN)/tickvault
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerate the protobuf module from our own .proto (grpcio-tools pins the protoc version).
proto: $(BIN)/tickvault
	$(BIN)/python -m grpc_tools.protoc -I ingest/proto --python_out=ingest/proto \
		--pyi_out=ingest/proto ingest/proto/upstox_feed_v3.proto

bench: setup
	$(BIN)/python -m bench.run_all

clean-data:
	-$(BIN)/tickvault db stop
	rm -rf .tickvault
