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
	@# The browser test of `medlite serve` drives the Debian chromium (Playwright never downloads a browser here);
	@# install it when missing and running as root, otherwise that test is skipped with the reason printed.
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "chromium not installed (not root): the browser test of medlite serve will be skipped"; }
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
