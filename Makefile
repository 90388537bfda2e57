# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# the CPU wheel of torch lies on this disk; pinning it keeps pip from pulling a CUDA build
TORCH := torch==2.13.0

NPM_STAMP := node_modules/.installed

.PHONY: demo test test-fast lint typecheck services demo-services contracts-check bench clean

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

# solcjs (the Solidity compiler when no native solc is installed) and anvil (a local EVM node)
$(NPM_STAMP): package.json package-lock.json | services
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: demo-services $(STAMP)
	$(VENV)/bin/agora demo

# The system packages the demo needs: bubblewrap, the sandbox Beta's training job runs in, and git,
# the repository behind the DVC-sourced dataset.
demo-services:
	@bash .ci/install-services.sh demo

# System packages the integration tests start (PostgreSQL, bubblewrap, chromium …).
services:
	bash .ci/install-services.sh

test: services $(DEV_STAMP) $(NPM_STAMP) contracts-check
	$(VENV)/bin/ruff check node kernel marketplace connector contracts training_jobs federation quality migrations tests bench examples
	$(VENV)/bin/mypy
	@# pytest exits 5 when it collected no test: that is a failure here, never a pass
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# the committed contracts/build artifacts must be what the sources compile to
contracts-check: $(DEV_STAMP) $(NPM_STAMP)
	$(VENV)/bin/agora contracts compile --check

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check node kernel marketplace connector federation quality migrations

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

# the benchmarks' own extra (Flower, for bench/fl.py): pip may move a few shared packages to
# versions Flower accepts, within the node's own bounds
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,bench]"
	touch $(STAMP) $(DEV_STAMP) $@

bench: $(BENCH_STAMP) $(NPM_STAMP)
	$(PY) bench/upload.py
	$(PY) bench/api.py
	$(PY) bench/notarize.py
	$(PY) bench/verify.py
	$(PY) bench/policy.py
	$(PY) bench/catalog.py
	$(PY) bench/negotiate.py
	$(PY) bench/sandbox.py
	$(PY) bench/onnx.py
	$(PY) bench/memorization.py
	$(PY) bench/data_quality.py
	$(PY) bench/fl.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache test-artifacts
