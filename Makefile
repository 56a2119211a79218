# The two commands: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench deb-deps clean

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
	$(BIN)/pytest -q

# Debian packages the tests use: the real Prometheus server (and promtool).
deb-deps:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; fi; }

lint: $(STAMP)
	$(BIN)/ruff check guard rules tests

clean:
	rm -rf $(VENV) build *.egg-info
