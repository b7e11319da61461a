# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test check lint format typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP) $@

run: $(STAMP)
	$(BIN)/spendgate serve

test: $(TEST_STAMP) check pytest

check: lint typecheck

lint: $(TEST_STAMP)
	$(BIN)/ruff check spendgate tests
	$(BIN)/ruff format --check spendgate tests

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP)
	$(BIN)/pytest

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix spendgate tests
	$(BIN)/ruff format spendgate tests

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# `make bench`: spendgate against a bare aiohttp proxy, side by side (docs/BENCHMARKS.md).
# QUICK=1 for a ~30 s run; DURATION, WARMUP, CONNECTIONS, RATE, KEYS, SCALE=1 pass through.
.PHONY: bench
bench: $(STAMP)
	BENCH_VIA_MAKE=1 QUICK=$(QUICK) DURATION=$(DURATION) WARMUP=$(WARMUP) \
	CONNECTIONS=$(CONNECTIONS) RATE=$(RATE) LATENCY_CONNECTIONS=$(LATENCY_CONNECTIONS) \
	KEYS=$(KEYS) SCALE=$(SCALE) SCALE_KEYS=$(SCALE_KEYS) LOADGEN=$(LOADGEN) \
	$(BIN)/python bench/run.py
