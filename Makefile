# Two commands on a fresh machine: `make run` and `make test`. Everything else is installed here,
# from requirements/dev.lock: every version pinned and every file checked against its sha256.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install browser lint format docs env-example clean lock lock-check audit

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the locked dependencies first (hash-checked), then the project itself without resolving again
$(STAMP): pyproject.toml requirements/dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## browser: Debian's chromium for the console's browser tests (Playwright drives /usr/bin/chromium;
## no browser download). Installed with apt-get when missing (as root, or through sudo).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "make: install Debian's chromium package ($(CHROMIUM))" >&2; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive sh -c \
		'apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null'
	test -x $(CHROMIUM)

browser: $(CHROMIUM)

## run: the whole stack (embedded NATS/PostgreSQL and sandbox vendors when unconfigured)
run: $(STAMP)
	$(BIN)/dfm up

## test: the whole suite, hermetic (own nats-server, fresh database), on TEST_WORKERS=3
## pytest-xdist workers, then the tests marked `serial` (timing-sensitive) alone;
## TEST_WORKERS=0 runs everything in this process (README, Tests)
TEST_WORKERS ?= 3
test: $(STAMP) $(CHROMIUM)
ifeq ($(TEST_WORKERS),0)
	$(BIN)/python -m pytest
else
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not serial"
	$(BIN)/python -m pytest -m serial
endif

## lock: requirements/{prod,dev}.lock from pyproject.toml (pins kept where still allowed;
## `make lock UPGRADE=1` takes the newest versions the bounds allow)
lock: $(STAMP)
	UV=$(abspath $(BIN))/uv requirements/lock.sh $(if $(UPGRADE),--upgrade)

## lock-check: fails when a lock no longer matches pyproject.toml (asks the index, like `lock`)
lock-check: $(STAMP)
	UV=$(abspath $(BIN))/uv requirements/lock.sh --check

## audit: published advisories for every pinned version in the locks
audit: $(STAMP)
	$(BIN)/python requirements/audit.py

## lint: the gates .ci/run applies before the suite: ruff's rules, ruff's format, mypy --strict,
## the import layers (import-linter) and the committed API documents
lint: $(STAMP)
	$(BIN)/ruff check contracts services tests bench migrations
	$(BIN)/ruff format --check contracts services tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m services.apidocs check

## docs: docs/asyncapi.json and docs/openapi-{ingress,gateway}.json, written from the code
docs: $(STAMP)
	$(BIN)/python -m services.apidocs write

## env-example: .env.example, written from the settings
env-example: $(STAMP)
	$(BIN)/python -m services.tooling.env_example > .env.example

## format: apply ruff's formatter and its safe fixes
format: $(STAMP)
	$(BIN)/ruff check --fix contracts services tests bench migrations
	$(BIN)/ruff format contracts services tests bench migrations

clean:
	rm -rf $(VENV) .dfm .pytest_cache
