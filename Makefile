# Every target creates/uses the project's virtualenv in .venv; `make test` and `make demo` set up
# everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: install tritonserver perf-analyzer test test-all demo lint docs bench bench-triton clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The CPU build of torch is installed first and pinned, so no dependency pulls a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH_PIN)"
	touch $@

install: $(VENV)/.installed

# A real tritonserver (Python backend only) from the nvidia-pytriton wheel, for the Triton tests.
tritonserver: install
	VENV=$(VENV) scripts/install_tritonserver.sh

# Triton's perf_analyzer (from the tritonclient 2.51.0 wheel, beside the venv's tritonclient), for its smoke
# test and benchmarks/perf_analyzer.sh.
perf-analyzer: install
	VENV=$(VENV) scripts/install_perf_analyzer.sh

test: install tritonserver perf-analyzer
	$(BIN)/pytest -q -m "not gpu"

test-all: install tritonserver perf-analyzer
	$(BIN)/pytest -q

demo: install
	$(BIN)/sctranslator demo

lint: install
	$(BIN)/ruff check sctranslator tests benchmarks scripts
	$(BIN)/lint-imports

# The documentation site, warnings as errors; the tutorials execute (the Triton one starts a real server).
docs: install tritonserver
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench: install
	$(BIN)/python benchmarks/bench_kernels.py
	$(BIN)/python benchmarks/bench_engine.py

bench-triton: install tritonserver
	$(BIN)/python benchmarks/bench_triton.py

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache build *.egg-info docs/_build docs/jupyter_execute docs/api/generated docs/_generated
