# tether — everything a fresh machine needs comes from here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench sysdeps clean

demo: $(STAMP)
	$(BIN)/tether demo $(DEMO_ARGS)

test: $(STAMP) sysdeps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not root" $(PYTEST_ARGS)

bench: $(STAMP) sysdeps
	$(BIN)/python -m bench $(BENCH_ARGS)

# Debian packages the tests start as real peers (PostgreSQL, squid, nginx, mosquitto, nftables,
# chromium). Installed only when missing.
sysdeps:
	scripts/sysdeps.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
