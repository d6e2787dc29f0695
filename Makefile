# Two commands do all set-up on a fresh machine:
#   make demo   builds .venv, installs, runs a scripted refinement on sample data with a built-in model
#   make test   builds .venv, installs system and test packages, runs the whole suite headless
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: demo test lint bench benchmark clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m napari_scribble_refine.cli demo --out demo_output

test: $(VENV)/.installed
	bash scripts/install-system-packages.sh
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_refine.py
	$(PY) benchmarks/bench_forward.py

# Robot-user accuracy benchmark against rival methods (docs/benchmarks.md); target: 30 min on 2 cores.
benchmark: $(VENV)/.installed
	$(PIP) -e ".[bench]"
	$(PY) benchmarks/run_benchmark.py

clean:
	rm -rf $(VENV) demo_output
