# Everything runs inside .venv, created on first use from the system's python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test check fmt bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime install (what `make demo` needs) and the dev install (tests, lint, types).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[tokenizer,fast]'
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/pacekeeper demo

# The whole suite: tests (unit, property, end-to-end on loopback), then format, lint and types.
# Two workers: most of the suite waits on real time (paced runs against loopback servers),
# so two overlap on two cores (795 s in one process, 418 s in two, on 12-02). More would
# crowd the timing of the tests that start fleets of processes.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)
	$(MAKE) --no-print-directory check

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# llmock, a mock server written by others, in a virtual environment of its own: the bench
# measures auto mode against it too (bench/independent.py). Skipped when it cannot install.
LLMOCK := $(VENV)/llmock/bin/llmock
$(LLMOCK):
	$(PYTHON) -m venv $(VENV)/llmock
	$(VENV)/llmock/bin/python -m pip install --quiet llmock==0.2.2

bench: $(STAMP)
	-$(MAKE) --no-print-directory $(LLMOCK)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
