# `make report` sets up .venv and runs the gradient-health report on the examples; `make test` builds the sdist and
# the wheel, installs the wheel into a fresh virtual environment and runs the test suite against it (what CI runs).
# `make dev-test` is the fast loop: the suite against the checkout, installed editable in .venv.
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
DIST ?= dist
# A CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
TPY := $(CURDIR)/$(TEST_VENV)/bin/python

.PHONY: report test dev-test dist lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,plot]"
	touch $@

report: $(VENV)/.installed
	$(PY) -m pytest --gradhealth examples/

# The sdist, then the wheel built from it (python -m build), both checked as an index would check them.
dist:
	rm -rf $(DIST) $(TEST_VENV)
	$(PYTHON) -m venv $(TEST_VENV)
	$(TPY) -m pip install -q $(TORCH)
	$(TPY) -m pip install -q "build>=1.0" "twine>=5" "ruff>=0.5"
	$(TPY) -m build -q --outdir $(DIST) .
	$(TPY) -m twine check --strict $(DIST)/*

# The suite runs from the unpacked sdist with its pytest_gradhealth/ removed, so the only one importable is the
# installed wheel's; the first command proves it.
test: dist
	$(TPY) -m ruff check .
	$(TPY) -m pip install -q "$$(ls $(DIST)/*.whl)[test,plot]"
	rm -rf .wheeltest && mkdir .wheeltest
	tar -xzf $(DIST)/*.tar.gz -C .wheeltest --strip-components=1
	rm -rf .wheeltest/pytest_gradhealth
	cd .wheeltest && $(TPY) -c "import pytest_gradhealth as p, sysconfig; \
	    assert p.__file__.startswith(sysconfig.get_path('purelib')), p.__file__; print('testing', p.__file__)"
	cd .wheeltest && GRADHEALTH_DIST=$(CURDIR)/$(DIST) GRADHEALTH_SOURCE=$(CURDIR) $(TPY) -m pytest -n 2

dev-test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py
