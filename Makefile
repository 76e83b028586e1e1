# The two commands: `make run` serves on the embedded SQLite default; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test checks install lint typecheck imports-check migrations-check openapi-check catalog-check pytest module-test clients-test bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

# The dev issuer follows PORT, so tokens name where the service really is (unless CONTROL_ISSUER
# says otherwise).
PORT ?= 8080
run: install
	CONTROL_ISSUER="$${CONTROL_ISSUER:-http://127.0.0.1:$(PORT)}" $(BIN)/control serve --host 127.0.0.1 --port $(PORT)

# `make test`: the quick checks first, two at a time (a lint or type error fails in seconds;
# `--output-sync` keeps each check's output together), then pytest with the TypeScript suites
# beside it. Those mostly wait (npm, a control plane they stop and start, token lifetimes), so
# they use the time pytest's workers leave idle; their output is held until pytest ends, then
# printed, and either failing fails the run.
CHECKS := lint typecheck imports-check migrations-check openapi-check catalog-check
NODE_SUITES := module-test clients-test

test: install browser-deps
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(CHECKS)
	@log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	$(MAKE) --no-print-directory -k $(NODE_SUITES) >"$$log" 2>&1 & node=$$!; \
	$(MAKE) --no-print-directory pytest; tests=$$?; \
	wait $$node; nodes=$$?; \
	echo "--- $(NODE_SUITES), run beside pytest:"; cat "$$log"; \
	if [ $$nodes -ne 0 ]; then echo "make test: $(NODE_SUITES) failed (just above)"; fi; \
	if [ $$tests -ne 0 ]; then echo "make test: pytest failed (above)"; fi; \
	exit $$(( tests || nodes ))

checks: $(CHECKS) $(NODE_SUITES)

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

# The SpacetimeDB module's query-set catalog is the one the control plane enforces.
catalog-check: install
	$(BIN)/control module catalog check

module-test:
	@bash scripts/module_test.sh

# The TypeScript client: its tests run a real `control serve` from the virtualenv.
clients-test: install
	@$(TEST_ENV) bash scripts/clients_test.sh

# pytest-xdist workers: four on the reference machine's two cores. The suite is mostly CPU (the
# app, the fuzzer, the servers it starts), but a worker spends much of its time waiting (a
# server starting, a retry's backoff, a token expiring): two workers kept the cores only 82 %
# busy, and the third and fourth fill the waits. `PYTEST_WORKERS=0` runs in one process.
# `loadgroup`: tests sharing a module's real server stay on one worker (see tests/conftest.py).
# Coverage data goes to a directory of this run's own: several runs in one checkout would
# otherwise erase and combine each other's worker and subprocess data files.
# Coverage's tracer is most of a third of the suite's time on CPython 3.11: `PYTEST_COV=` runs
# the tests without it, for a quicker local run that checks no coverage floor. The breadth
# suites always run without it (the `unmeasured` mark, harness/measurement.py).
PYTEST_WORKERS ?= 4
# The test run writes bytecode caches (`__pycache__/`, ignored by git) even where
# PYTHONDONTWRITEBYTECODE is set. Without them every pytest process parses and assertion-rewrites
# again the ~400 modules pytest rewrites (its plugins' too: hypothesis, schemathesis), about 8 s
# of CPU each, and every server and CLI the tests start compiles `control/` again. (A cache
# prefix elsewhere would ignore the bytecode pip wrote, and compile the virtualenv again.)
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE
PYTEST_COV ?= --cov=control --cov-report=term

pytest: install browser-deps
	data=$$(mktemp -d); trap 'rm -rf "$$data"' EXIT; \
	COVERAGE_FILE="$$data/.coverage" $(TEST_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) \
		--dist loadgroup $(PYTEST_COV) $(PYTEST_ARGS)

# The console's browser tests (tests/test_console_browser.py) drive Debian's chromium and
# chromedriver: installed here where missing (as root, with apt-get). Where they cannot be, this
# says so and those tests skip with the same message.
BROWSER_PACKAGES := chromium chromium-driver
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null; } \
		|| echo "browser-deps: could not install $(BROWSER_PACKAGES); the console's browser tests will skip"; \
	else \
		echo "browser-deps: $(BROWSER_PACKAGES) missing and not installable here (needs root and apt-get); the console's browser tests will skip"; \
	fi

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
