# flask-plan-regen developer tasks.   make test | make test-fast | make demo | make lint
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# Only the source dirs that exist (git keeps no empty dirs).
SRC := $(wildcard flask_plan_regen tests examples bench)
PYTEST_ARGS ?=

.PHONY: venv postgres lint format typecheck test test-fast demo bench clean

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

lint: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: venv
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

typecheck: venv
	$(BIN)/mypy

test: venv postgres lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(BIN)/python examples/demo.py

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
