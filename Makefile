# Quick start: `make demo` (the main job) and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYS_STAMP := $(VENV)/.system

.PHONY: demo test lint bench setup system clean

setup: $(STAMP) $(SYS_STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[plot,compress,fast,dev]'
	touch $(STAMP)

# System packages the tests and the demo need (mosquitto for the fleet link).
$(SYS_STAMP): $(BIN)/python
	bash scripts/install-system.sh
	touch $(SYS_STAMP)

demo: setup
	$(BIN)/edgecut demo

test: setup
	$(BIN)/ruff check edge cloud partition devices tests bench
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/runtime.py --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
