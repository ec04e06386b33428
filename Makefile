# Quick start: `make demo` (the main job) and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYS_STAMP := $(VENV)/.system

.PHONY: demo test test-main test-device lint bench setup system clean

setup: $(STAMP) $(SYS_STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,plot,compress,fast,dev]'
	touch $(STAMP)

# System packages the tests and the demo need (mosquitto for the fleet link).
$(SYS_STAMP): $(BIN)/python
	bash scripts/install-system.sh
	touch $(SYS_STAMP)

demo: setup
	$(BIN)/edgecut demo

test: test-main test-device

test-main: setup
	$(BIN)/ruff check edge cloud partition devices tests bench scripts
	$(BIN)/python -m pytest -q tests

# The device side on the oldest and the JetPack 6 stacks it supports, each in its own
# virtualenv built from a pyenv interpreter (scripts/find-python.sh says where it looked
# when one is missing) with the versions pinned in scripts/device-suite/<venv>.txt.
DEVICE_SUITES := py38 py310
DEVICE_TESTS := $(shell cat scripts/device-suite/tests.txt)

test-device: $(foreach s,$(DEVICE_SUITES),test-device-$(s))

.venv-%/.installed: pyproject.toml scripts/device-suite/%.txt
	rm -rf .venv-$*
	py=$$(bash scripts/find-python.sh $(subst py3,3.,$*)) && $$py -m venv .venv-$*
	# A current pip (25.0 on 3.8): the one a 3.8 venv starts with backtracked for most of
	# an hour over these pins; --no-compile leaves bytecode to the first import.
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q --no-compile -c scripts/device-suite/$*.txt -e '.[cpu,compress,fast,grpc,test]'
	touch $@

test-device-%: $(SYS_STAMP)
	@start=$$(date +%s); $(MAKE) --no-print-directory .venv-$*/.installed || exit 1; \
	  echo "device suite $*: virtualenv ready in $$(( $$(date +%s) - start )) s"
	@.venv-$*/bin/python -c 'import sys, numpy, onnxruntime; print("device suite $*: Python", sys.version.split()[0], "NumPy", numpy.__version__, "ONNX Runtime", onnxruntime.__version__)'
	@start=$$(date +%s); .venv-$*/bin/python -m pytest -q -p no:cacheprovider $(DEVICE_TESTS); \
	  rc=$$?; echo "device suite $*: tests took $$(( $$(date +%s) - start )) s"; exit $$rc

bench: setup
	$(BIN)/python bench/runtime.py --json

clean:
	rm -rf $(VENV) .venv-py38 .venv-py310 build *.egg-info .pytest_cache .ruff_cache
