# The two commands: `make run` serves on the embedded SQLite default; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint typecheck imports-check migrations-check openapi-check pytest module-test bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/control serve --host 127.0.0.1 --port 8080

test: install lint typecheck imports-check migrations-check openapi-check module-test pytest

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy --strict control

# No import cycles in control/, the SDK and kit/ stand alone, bench/ and scripts/ never import tests/.
imports-check: install
	$(BIN)/python scripts/check_imports.py

migrations-check: install
	$(BIN)/python scripts/check_migrations.py

openapi-check: install
	$(BIN)/control openapi check

module-test:
	@bash scripts/module_test.sh

# Workers for pytest-xdist: much of the suite waits on real servers, subprocesses and
# PostgreSQL, so two workers keep both of this machine's cores busy. `PYTEST_WORKERS=0` runs
# in one process.
PYTEST_WORKERS ?= 2

pytest: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --cov=control --cov-report=term $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/mint.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/ceiling.py

# A few minutes of sustained minting with concurrent admin changes on PostgreSQL.
soak: install
	CONTROL_FUZZ_EXAMPLES=300 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage module/node_modules
