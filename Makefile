# Two commands do all set-up on a fresh machine:
#   make demo   builds .venv, installs, runs a scripted refinement on sample data with a built-in model
#   make test   builds .venv, installs system and test packages, runs the whole suite headless
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: demo test lint bench benchmark mutation fuzz clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) torch  # the CPU wheel pinned in constraints.txt, installed first
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

# Mutation testing of the engine's modules against their fast unit tests (docs/testing.md);
# [tool.mutmut] in pyproject.toml says which. Target: 30 min on 2 cores. The last line printed
# is "mutation kill rate: NN.N %". MUTMUT_JOBS: parallel mutant runs; NICE: e.g. "nice -n 19".
MUTMUT_JOBS ?= 2
NICE ?=
$(VENV)/.mutmut-installed: $(VENV)/.installed pyproject.toml
	$(PIP) -e ".[test,dev]"
	touch $@

mutation: $(VENV)/.mutmut-installed
	rm -rf mutants
	@mkdir -p mutants
	@echo "mutmut run --max-children $(MUTMUT_JOBS) (log: mutants/mutmut-run.log)"
	@start=$$(date +%s); \
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(NICE) $(VENV)/bin/mutmut run \
		--max-children $(MUTMUT_JOBS) > mutants/mutmut-run.log 2>&1 \
		|| { tail -n 40 mutants/mutmut-run.log; exit 1; }; \
	echo "mutmut run took $$(( $$(date +%s) - start )) s"
	@$(PY) scripts/mutation_report.py

# Property-based tests of the public entry points (Hypothesis) with 20 times the examples
# `make test` runs (tests/conftest.py's "long" profile); about 11 minutes on 2 cores.
fuzz: $(VENV)/.installed
	HYPOTHESIS_PROFILE=long $(PY) -m pytest tests/test_fuzz*.py -p no:randomly -q

clean:
	rm -rf $(VENV) demo_output mutants
