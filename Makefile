# Quick start:  make demo   (set up + run the main job on the embedded default)
#               make test   (set up + run the test suite)
# Both create .venv on first use (torch 2.14.1 / torchvision 0.29.1, CPU is fine) and build fastgeom._C.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test lint ext cuda-check bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1 numpy matplotlib tqdm \
	    pytest hypothesis scipy scikit-learn mpmath ninja ruff mypy mlxtend
	touch $@

# editable install of the Python package, then the C++ extension built in place; every C++ source and
# header is a prerequisite, so `make test` never tests a stale .so
$(VENV)/.installed: $(VENV)/.deps setup.py $(wildcard csrc/*.cpp csrc/ops/*.cpp csrc/*.h csrc/*/*.h csrc/*/*.cuh)
	FASTGEOM_BUILD_EXT=0 $(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	FASTGEOM_BUILD_CUDA=0 $(BIN)/python setup.py -q build_ext --inplace
	touch $@

setup: $(VENV)/.installed

ext: setup
	FASTGEOM_BUILD_CUDA=0 $(BIN)/python setup.py -q build_ext --inplace

demo: setup
	$(BIN)/python -m fastgeom demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the checks CI runs (configuration in pyproject.toml; .pre-commit-config.yaml runs the same)
lint: $(VENV)/.deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fastgeom

# Compile the CUDA sources without a GPU (CI): into a scratch build dir, nothing is installed.
cuda-check: setup
	rm -rf build/cuda-check
	FASTGEOM_BUILD_EXT=1 FASTGEOM_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} \
	    $(BIN)/python setup.py -q build_ext --build-lib build/cuda-check/lib --build-temp build/cuda-check/tmp

clean:
	rm -rf build fastgeom/_C*.so $(VENV)
