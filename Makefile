# Fresh machine: `make demo` or `make test` create .venv, install, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on these machines torch==2.13.0 is a CPU build already on disk; an unpinned torch
# would pull several GB of CUDA packages.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medlite demo

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow (whole training runs, every-model sweeps): a quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
