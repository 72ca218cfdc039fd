# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean-demo gpu-check

EXTRAS_STAMP := $(VENV)/.installed-extras
DEV_STAMP := $(VENV)/.installed-dev
PIP := $(PY) -m pip install --disable-pip-version-check -q

# Runtime dependencies (real runs, make bench).
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	@touch $(STAMP)

# Optional features (scikit-learn's t-SNE in embedding.png): the demo draws with them.
$(EXTRAS_STAMP): $(STAMP) requirements-extras.txt
	$(PIP) -r requirements-extras.txt
	@touch $(EXTRAS_STAMP)

# make test adds pytest and ruff to both, and the export packages (the tests check the
# ONNX export), so the optional paths are tested too.
$(DEV_STAMP): $(EXTRAS_STAMP) requirements-dev.txt requirements-export.txt
	$(PIP) -r requirements-dev.txt -r requirements-export.txt
	@touch $(DEV_STAMP)

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

demo: $(EXTRAS_STAMP)
	$(PY) tools/demo.py

bench: $(DEV_STAMP)
	$(PY) tools/bench_all.py

clean-demo:
	rm -rf output/demo

# The CUDA path, proved and measured on a GPU machine with the python3 that holds its
# torch (no .venv; yacs on PYTHONPATH, see docs/gpu.md).
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py --output gpu_check.json
