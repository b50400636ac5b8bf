# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench fuzz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m examples.demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check consent_middleware anonymizer

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest

test: lint typecheck unit

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.middleware
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.import_log
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.spark_vs_duckdb --events 1000000

# Coverage-guided fuzzing of the cookie decoder and the log parser (atheris); not part of CI.
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.installed
	$(BIN)/python -m pip install -q atheris
	$(BIN)/python fuzz/fuzz_cookie.py -max_total_time=$(FUZZ_SECONDS)
	$(BIN)/python fuzz/fuzz_log_parser.py -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-output
