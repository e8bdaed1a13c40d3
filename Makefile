# Self-documenting Makefile: `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install lock system-deps ferretdb-build ferretdb run test screenshot lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# requirements.lock pins the whole tree (with hashes) that `make test` ran against; setup.cfg keeps
# the compatible ranges it is resolved from. The project itself is installed on top, without deps,
# built with the locked setuptools (no build isolation), so nothing unpinned is fetched.
LOCK := requirements.lock
LOCK_FLAGS := --quiet --extra=test --extra=dev --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links

$(STAMP): setup.cfg $(LOCK)
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/pip check || { echo "$(LOCK) does not satisfy setup.cfg: run 'make lock' and commit $(LOCK)" >&2; exit 1; }
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install exactly the versions in requirements.lock, then the server

# Not `lock: install`: after setup.cfg gains a dependency, install fails until the lock has it.
lock: ## Re-resolve requirements.lock from setup.cfg (keeps pins; LOCK_ARGS=--upgrade bumps them all)
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r $(LOCK)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --output-file=$(LOCK) setup.cfg

system-deps: ## Install the Debian packages the tests drive (needs root)
	bash .ci/system-deps

ferretdb-build: ## Build FerretDB (the tests' MongoDB stand-in) into ~/.cache/sse-rooms; needs Go
	@bash .ci/ferretdb-build || echo "FerretDB was not built: the MongoDB tests will be skipped (pytest -rs says why)"

ferretdb: ## Run FerretDB (a MongoDB stand-in, not MongoDB) on 127.0.0.1:27017, data in var/ferretdb
	@set -o pipefail; binary="$$(bash .ci/ferretdb-build | tail -n 1)" && mkdir -p var/ferretdb && \
	exec "$$binary" --handler=sqlite "--sqlite-url=file:var/ferretdb/?_txlock=immediate" --listen-addr=127.0.0.1:27017 \
	  --telemetry=disable --state-dir=- --debug-addr=- --test-capped-cleanup-interval=1s

run: install ## Run gunicorn (gevent workers) on $$HOST:$$PORT, default 127.0.0.1:8080, embedded store
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: install system-deps ferretdb-build ## Run every test (installs what it needs first, Debian packages and FerretDB too)
	$(BIN)/pytest $(PYTEST_ARGS)

screenshot: install system-deps ## Refresh docs/demo.png from the demo page (headless Chromium, real gunicorn)
	DEMO_SCREENSHOT=$(CURDIR)/docs/demo.png $(BIN)/pytest tests/test_browser.py::test_demo_page_screenshot

lint: install ## Check style with ruff
	$(BIN)/ruff check app tests bench wsgi.py gunicorn.conf.py

bench: install ## Run the benchmarks (bounded in time) and write bench/results/
	bash bench/run.sh

clean: ## Remove the virtualenv and runtime data
	rm -rf $(VENV) var .pytest_cache
