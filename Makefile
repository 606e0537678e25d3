# Two commands do all the set-up on a fresh machine (Python 3.11+ and make):
#   make run    create .venv, install, start everything (embedded Valkey, web, worker)
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-long check docs bench lock clean

# Installs come from the lock (requirements-dev.txt: every package pinned, with its hashes), never from the
# ranges in pyproject.toml; the project itself goes on top without dependencies.
$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gifting dev

test: $(STAMP)
	$(BIN)/pytest

# The suite with every property test at its full example count (a plain run does half: tests/conftest.py).
test-long: $(STAMP)
	GIFTING_TEST_LONG=1 $(BIN)/pytest

LINTED := $(wildcard gifting workers loadtest tests)

check: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/gifting config --write-readme README.md

bench: $(STAMP)
	$(BIN)/python loadtest/bench_settlement.py

# After a change to pyproject.toml's dependencies: pins what is already locked, adds what is new (pip-compile
# --upgrade-package NAME moves one pin). requirements.txt is the production subset, at the same versions.
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	$(LOCK) --extra dev --output-file requirements-dev.txt pyproject.toml
	$(LOCK) --constraint requirements-dev.txt --output-file requirements.txt pyproject.toml

clean:
	rm -rf $(VENV) .gifting .pytest_cache .mypy_cache .ruff_cache
