# Two commands from a fresh clone: `make demo` and `make test`. Everything else is optional.
VENV ?= .venv
PY := $(VENV)/bin/python
# cfn-lint and checkov (infra/ tests) live in their own venv: their pins clash with the project's.
INFRA_VENV ?= .venv-infra
export RAG_HOME ?= $(CURDIR)/.rag
export DAGSTER_HOME ?= $(RAG_HOME)/dagster

.PHONY: install demo dev sync test test-fast clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: any other torch spec pulls gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(INFRA_VENV)/.installed: infra/requirements-lint.txt
	python3 -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install -q --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install -q -r infra/requirements-lint.txt
	touch $@

# Azurite (the Azure Blob emulator test_azure.py starts) from npm, into .node/.
AZURITE := .node/node_modules/.bin/azurite-blob
$(AZURITE):
	npm install --prefix .node --no-audit --no-fund --loglevel=error azurite@3.37.0

install: $(VENV)/.installed $(INFRA_VENV)/.installed $(AZURITE)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The demo, the UI and a sync need the project's venv only; `install` adds the infra linters the tests use.
demo: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml  ## build the demo source, sync it through Dagster, search it
	$(VENV)/bin/rag-assets demo

dev: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml  ## Dagster UI + daemon (sensor) on http://127.0.0.1:3000
	# Started from DAGSTER_HOME so Dagster reads the dagster.yaml copied there, not this folder's.
	cd $(DAGSTER_HOME) && $(CURDIR)/$(VENV)/bin/dagster dev -w $(CURDIR)/workspace.yaml -h 127.0.0.1 -p 3000

sync: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/rag-assets sync

test: install  ## the whole suite: unit layer, then real Dagster runs, Iceberg, Qdrant, model, services
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed  ## the unit layer only (planning rules, row builders): seconds, no run, no model
	$(PY) -m pytest -q rag_assets_tests/unit

clean:
	rm -rf $(RAG_HOME)
