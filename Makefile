# Two commands do all the set-up on a fresh machine (Python 3.11+ and make):
#   make run    create .venv, install, start everything (embedded Valkey, web, worker)
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gifting dev

test: $(STAMP)
	$(BIN)/pytest

LINTED := $(wildcard gifting workers loadtest tests)

check: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/gifting config --write-readme README.md

bench: $(STAMP)
	$(BIN)/python loadtest/bench_settlement.py

clean:
	rm -rf $(VENV) .gifting .pytest_cache .mypy_cache .ruff_cache
