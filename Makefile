# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: venv tools demo test test-embedded lint typecheck unit format clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

venv: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/saga demo

# The tests validate docker-compose.yml with Debian's docker-compose (no Docker engine
# needed) and drive the web console in Debian's Chromium through its chromedriver
# (tests/browser). Each is installed when missing; apt-get update only if the package
# lists are stale.
tools:
	@command -v docker-compose >/dev/null 2>&1 || $(call apt_install,docker-compose,docker-compose)
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } \
		|| $(call apt_install,chromium chromium-driver,/usr/bin/chromium and /usr/bin/chromedriver)

# $(call apt_install,PACKAGES,WHAT): install Debian's PACKAGES as root, or say that WHAT is
# missing and how to get it.
define apt_install
{ \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make tools: $(2) missing; install it (apt-get install $(1)) or run make as root" >&2; \
			exit 1; \
		fi; \
		apt-get install -y -q $(1) \
			|| { apt-get update -q && apt-get install -y -q $(1); }; \
	}
endef

# Everything CI checks: lint, formatting, types, then the whole test suite.
test: tools lint typecheck
	$(BIN)/pytest

# The tests that depend most on where the servers are, on the embedded default whatever the
# environment says: CI runs the main pass against its PostgreSQL 15, then this.
test-embedded: $(INSTALLED)
	env -u DATABASE_URL -u KAFKA_BOOTSTRAP_SERVERS $(BIN)/pytest -m embedded

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# journeys/ and examples/ may import only saga and saga.testing from the engine.
	$(BIN)/pytest -q tests/unit/test_public_imports.py
	# The layer contracts in pyproject.toml: the domain imports no adapter, etc.
	$(BIN)/lint-imports

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/pytest tests/unit

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
