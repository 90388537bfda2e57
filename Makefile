# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# the CPU wheel of torch lies on this disk; pinning it keeps pip from pulling a CUDA build
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint typecheck services bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP) $@

demo: $(STAMP)
	$(VENV)/bin/agora demo

# System packages the integration tests start (PostgreSQL, bubblewrap, chromium …).
services:
	bash .ci/install-services.sh

test: $(DEV_STAMP) services
	$(VENV)/bin/ruff check node kernel marketplace connector contracts training_jobs migrations tests bench
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check node kernel marketplace connector migrations

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

bench: $(DEV_STAMP)
	$(PY) bench/upload.py
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
