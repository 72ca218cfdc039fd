# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean-demo gpu-check

# The tests also check the ONNX export, so the optional export packages are installed too.
$(STAMP): requirements.txt requirements-export.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt \
		-r requirements-export.txt
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) tools/demo.py

bench: $(STAMP)
	$(PY) tools/bench_all.py

clean-demo:
	rm -rf output/demo

# The CUDA path, proved and measured on a GPU machine with the python3 that holds its
# torch (no .venv; yacs on PYTHONPATH, see the README's "GPU check").
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py --output gpu_check.json
