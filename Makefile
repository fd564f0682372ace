# connector_pipelines — the two quickstart commands are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install browser demo test smoke sandbox bench chaos lint clean postgres-up

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

## --compile-bytecode: every Dagster run is a new process; without .pyc files (this machine sets
## PYTHONDONTWRITEBYTECODE) each one recompiles Dagster from source, ~3 s more per run start.
## Once per pyproject.toml change (the stamp .venv/.installed): `make demo` and `make test` do not resolve,
## build and byte-compile the environment again each time (~2 s idle, more on a busy box); `rm .venv/.installed`
## forces it.
install: $(VENV)/.installed browser

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -e '.[dev]'
	touch $@

## The browser test (connector_pipelines_tests/ui) drives Debian's chromium headless through its chromedriver:
## installed with apt when missing (as root, or through sudo), skipped quietly when both are there.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make install: chromium and chromedriver are missing and apt-get is not available;" \
	         "install Debian's chromium and chromium-driver (the browser test needs them)" >&2; exit 1; fi; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "make install: installing chromium needs root: run 'apt-get install -y chromium chromium-driver' as root" >&2; \
	    exit 1; fi; \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver \
	    >/dev/null || { echo "make install: apt-get could not install chromium chromium-driver" >&2; exit 1; }; \
	fi

## Everything needed, then sandboxes + receiver + `dagster dev` on SQLite with demo data.
demo: install
	$(BIN)/python -m sandboxes.harness.demo

## Lint, then the whole suite (unit, sandbox, Dagster, end-to-end on SQLite and PostgreSQL, smoke).
test: install postgres-up
	$(BIN)/ruff check -q connector_pipelines connector_pipelines_tests benchmarks sandboxes
	$(BIN)/python -m pytest -q -x --durations=15

## The BC ⇄ Jira and F&O ⇄ Jira flows once, through a real Dagster instance on SQLite; non-zero exit if anything is missing.
smoke: install
	$(BIN)/python -m sandboxes.harness.smoke

## All sandboxes on loopback; prints a JSON map of base URLs and credentials; Ctrl-C stops.
sandbox: install
	$(BIN)/python -m sandboxes.harness

## Every benchmark runs, even after one misses its target; the exit status says whether any did.
bench: install postgres-up
	@status=0; \
	$(BIN)/python -m benchmarks.bc_jira || status=1; \
	$(BIN)/python -m benchmarks.fo_jira || status=1; \
	$(BIN)/python -m benchmarks.acumatica_jira || status=1; \
	$(BIN)/python -m benchmarks.d365_monday || status=1; \
	$(BIN)/python -m benchmarks.backlog || status=1; \
	$(BIN)/python -m benchmarks.daemon_latency || status=1; \
	exit $$status

## Overlapping writers, kill -9 under search lag, forgeries and replays, the receiver killed under load
## (SQLite and PostgreSQL); one JSON line of counters that must all be 0 (~12 min; the suite runs it small).
chaos: install postgres-up
	$(BIN)/python -m benchmarks.chaos

lint: install
	$(BIN)/ruff check connector_pipelines connector_pipelines_tests benchmarks sandboxes

postgres-up:
	@if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then \
	  echo "starting PostgreSQL"; pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	fi

clean:
	rm -rf $(VENV) .dagster_home .demo
