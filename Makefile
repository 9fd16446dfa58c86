# Two commands on a fresh machine: `make run` and `make test`. Everything else is installed here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install lint clean bench-ingress

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## run: the whole stack (embedded NATS/PostgreSQL and sandbox vendors when unconfigured)
run: $(STAMP)
	$(BIN)/dfm up

## test: the whole suite, hermetic (own nats-server, fresh database)
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check contracts services tests
	$(BIN)/mypy --strict contracts services

clean:
	rm -rf $(VENV) .dfm .pytest_cache
