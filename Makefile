# Two commands do all the set-up on a fresh machine:
#   make demo   generate the demo dataset, train an FCN on it, evaluate and predict, draw the pictures
#               (offline, CPU or GPU; installs matplotlib for the pictures)
#   make test   lint (ruff check .) and run the test suite (what CI runs)
# The virtual environment is created on first use. Overrides: PYTHON (interpreter that creates it),
# VENV (its location), PYTEST_ARGS (extra pytest arguments), DEMO_ARGS (extra tools/demo.py arguments),
# TORCH_INDEX (a pip index to install torch and torchvision from first, e.g. the CPU-only build:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu   a ~1 GB venv instead of ~5.6 GB with CUDA).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check
TORCH_INDEX ?=

.PHONY: setup setup-demo setup-test test demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
ifneq ($(TORCH_INDEX),)
	$(PY) -m pip install $(PIP_FLAGS) --index-url $(TORCH_INDEX) "torch>=2.4,<3" "torchvision>=0.19,<1"
endif
	$(PY) -m pip install $(PIP_FLAGS) -r requirements.txt
	touch $@

$(VENV)/.demo: requirements-demo.txt $(VENV)/.runtime
	$(PY) -m pip install $(PIP_FLAGS) -r requirements-demo.txt
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(PY) -m pip install $(PIP_FLAGS) -r requirements-test.txt
	touch $@

setup: $(VENV)/.runtime

setup-demo: $(VENV)/.demo

setup-test: $(VENV)/.test

test: setup-test
	$(PY) -m ruff check .
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup-demo
	$(PY) tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf runs/demo data/demo predictions
