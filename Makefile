# The two commands: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint readme deb-deps clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv

$(STAMP): pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

## demo: find the waste in the embedded sandbox account (no AWS account needed)
demo: $(STAMP)
	$(BIN)/guard demo

## test: install everything the suite needs, then run it
test: $(STAMP) deb-deps
	$(BIN)/ruff check guard rules tests
	$(BIN)/pytest -q --numprocesses auto --maxprocesses 4

# Debian packages the tests use: the real Prometheus server (and promtool), Alertmanager's amtool (the example
# route), and a PostgreSQL server.
DEB_PACKAGES := prometheus prometheus-alertmanager postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deb-deps:
	@if ! command -v prometheus >/dev/null || ! command -v amtool >/dev/null || \
	    ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(DEB_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
	fi

## bench: vmguard side by side with its peers (Cloud Custodian, naive launchers, pip); rewrites bench/RESULTS.md
# One case: `.venv/bin/python -m bench scan-1000`; opt-in cases: scan-10000, daemon-rss-10000 (`python -m bench all`).
# Cloud Custodian gets a virtualenv of its own under .bench/. The heartbeat load generator is Debian's wrk.
.PHONY: bench
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "installing Debian package: wrk"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(BIN)/python -m bench default
	$(BIN)/python -m bench.env_bench

## readme: regenerate the README's rule reference from the rules' docstrings
readme: $(STAMP)
	$(BIN)/python -m guard.docs README.md

lint: $(STAMP)
	$(BIN)/ruff check guard rules tests

clean:
	rm -rf $(VENV) build *.egg-info
