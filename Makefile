# Two commands on a fresh machine: `make demo` (set up, then run the main job on the built-in
# default) and `make test` (set up, then lint and run the tests). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-lowest lint clean

# torch comes from PyTorch's CPU index first (a plain-PyPI torch on Linux is the CUDA build, GBs of
# it); where that index is out of reach, a local wheel of the same build (pip's find-links) serves.
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --retries 1 --no-deps --index-url $(TORCH_INDEX) "$(TORCH_CPU)"
	$(BIN)/python -m pip install --quiet -r requirements-cpu.txt
	touch $@

demo: $(STAMP)
	$(BIN)/framepipe demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

test: lint
	$(BIN)/python -m pytest

# The tiny-VAE training script's tests (marked slow, deselected by `make test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# The tests on the lowest release of every dependency pyproject.toml admits (requirements-lowest.txt).
test-lowest:
	$(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install --quiet -r requirements-lowest.txt
	.venv-lowest/bin/python -m pip install --quiet --no-deps -e .
	.venv-lowest/bin/python -m pytest

clean:
	rm -rf $(VENV) .venv-lowest framepipe-demo.mp4
