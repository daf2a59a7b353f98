# One command each: `make report` sets up and runs the gradient-health report on the examples,
# `make test` sets up and runs the test suite. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: report test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# A CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,plot]"
	touch $@

report: $(VENV)/.installed
	$(PY) -m pytest --gradhealth examples/

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py
