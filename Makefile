# mailbox-link: `make run` brings the system up, `make test` checks everything.
# Everything a target needs is installed by the target itself (uv from PyPI, servers on demand).

PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := $(PYTHON) -m uv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

SOURCES := shared/contract/src shared/src services/link-api/src services/imap-verifier/src services/registry/src services/oauth-broker/src deploy/local/src
TEST_DIRS := shared/contract/tests shared/tests services/link-api/tests services/imap-verifier/tests services/registry/tests services/oauth-broker/tests deploy/local/tests tests

.DEFAULT_GOAL := help
.PHONY: help setup infra run test lint typecheck unit contract wheel image bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install uv and the locked Python dependencies (never downloads a Python)
	@$(PYTHON) --version >/dev/null 2>&1 || { echo "$(PYTHON) is required"; exit 1; }
	@$(UV) --version 2>/dev/null | grep -q "$(UV_VERSION)" || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	@$(UV) sync --locked --quiet

infra: setup ## Install/build Kafka, FerretDB, PostgreSQL and Dovecot (cache: ~/.cache/mailbox-link; done on demand too)
	$(UV) run python -m localinfra install

run: setup ## Start Kafka, MongoDB protocol, Dovecot and the services; Ctrl-C stops
	$(UV) run python -m localinfra run

lint: setup ## ruff lint and format check; the AsyncAPI document and JSON Schemas are current
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run python -m mailbox_link_shared.asyncapi --check || { echo "shared/contract/asyncapi.yaml is stale: run make contract"; exit 1; }
	$(UV) run python -m mailbox_link_contract.json_schemas --check || { echo "run make contract"; exit 1; }

typecheck: setup ## mypy --strict on the code and the tests
	$(UV) run mypy $(SOURCES)
	@for dir in $(TEST_DIRS); do $(UV) run mypy $$dir || exit 1; done

unit: setup ## Only the tests that need no server
	$(UV) run pytest -m "not connected"

test: lint typecheck infra ## Lint, type-check, then every test against real servers
	$(UV) run pytest

contract: setup ## Regenerate the contract's AsyncAPI document and JSON Schemas from the catalogue
	$(UV) run python -m mailbox_link_shared.asyncapi
	$(UV) run python -m mailbox_link_contract.json_schemas

wheel: setup ## Build the contract package's wheel into dist/ (what other services install)
	$(UV) build --package mailbox-link-contract --wheel --out-dir dist

image: setup ## Build the services' container image localhost/mailbox-link:dev (podman, Debian base made locally)
	$(UV) run python -m localinfra.app_image

bench: setup ## Link latency, registry throughput, detection, OAuth link, store ops, ownership proof, security mistakes, outage recovery, mailbox access (figures in bench/results/)
	$(UV) run python bench/link_latency.py
	$(UV) run python bench/link_throughput.py
	$(UV) run python bench/oauth_link.py
	$(UV) run python bench/registry_throughput.py
	$(UV) run python bench/detection.py
	$(UV) run python bench/store_ops.py
	$(UV) run python bench/ownership_proof.py
	$(UV) run python bench/security_mistakes.py
	$(UV) run python bench/outage_recovery.py
	$(UV) run python bench/mailbox_access.py

clean: ## Remove local state (keeps the download cache)
	rm -rf .run .venv .mypy_cache .ruff_cache .pytest_cache bench/results
