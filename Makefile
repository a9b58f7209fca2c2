# Everything a fresh machine needs goes through these targets; README.md names `make run`
# (the main job) and `make test` (the tests), and .ci/run calls `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run notebook test lint proto lock bench clean-data chromium

# setup.py builds the compiled decoder, COPY encoder, slot writer and bars: a change to it or
# their sources rebuilds the install.
$(BIN)/tickvault: pyproject.toml setup.py ingest/upstox/_fastdecode.pyx store/_copyrows.pyx \
		ingest/channels/_slots.pyx ingest/_minute_bars.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The page's chart library (lightweight-charts, pinned with its hash in the lock), where the
# API serves it from: api/vendor/node_modules, git-ignored. Again only when the lock moves.
CHART_LIBRARY := api/vendor/node_modules/lightweight-charts/package.json
$(CHART_LIBRARY): api/vendor/package.json api/vendor/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm is needed for the page's chart library (Debian: apt-get install npm)"; exit 1; }
	npm ci --prefix api/vendor --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# The Python environment, the page's library, and the TimescaleDB extension (built from
# Debian's source once).
setup: $(BIN)/tickvault $(CHART_LIBRARY)
	$(BIN)/tickvault db install

# Debian's chromium for the page's browser tests (tests/test_page.py; Playwright's own browser
# download is not reachable), once: with apt-get as `tickvault db install` installs its build
# tools, as root or through sudo -n. Where neither can, it says so and those tests skip.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then as_root=; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as_root="sudo -n"; \
	  else echo "make: chromium is missing and apt-get needs root: the browser tests will skip"; exit 0; fi; \
	  echo "make: installing Debian's chromium for the browser tests"; \
	  $$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: setup
	$(BIN)/tickvault run

# JupyterLab on notebooks/ (installed on first use); the kernel finds the store `make run` runs.
notebook: setup
	$(BIN)/pip install --quiet -e ".[dev,notebook]"
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# Three workers on two cores: most tests wait on sockets, processes and the database.
test: setup chromium lint
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
