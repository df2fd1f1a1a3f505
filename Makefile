# flask-plan-regen developer tasks.   make test | make test-fast | make demo | make lint | make dist
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# Only the source dirs that exist (git keeps no empty dirs).
SRC := $(wildcard flask_plan_regen tests examples bench)
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: venv postgres pgbouncer chromium lint format typecheck test test-fast demo dist bench clean

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the venv is gone).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# PostgreSQL server binaries for the postgres tests (apt-get install if missing).
postgres:
	bash .ci/ensure-postgres

# PgBouncer for the connection-pooler tests (apt-get install if missing).
pgbouncer:
	bash .ci/ensure-pgbouncer

# Headless Chromium and chromedriver for the browser test (apt-get install if missing).
chromium:
	bash .ci/ensure-chromium

lint: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: venv
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

typecheck: venv
	$(BIN)/mypy

# The whole suite: the example app's own suite first (examples/tests, on an in-process
# Redis: it runs before anything starts a Redis server), then tests/, whose slow tests
# build the sdist and wheel, run `twine check --strict` and install the wheel in a fresh venv.
test: venv postgres pgbouncer chromium lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# A scripted regeneration, then the demo page until Ctrl-C (DEMO_ARGS=--scripted: no page).
demo: venv
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

# The sdist and the wheel in dist/, checked as a package index would.
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# Benchmarks (about 11 minutes); rewrites the results table in docs/performance.md.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(BENCH_STAMP) postgres
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
