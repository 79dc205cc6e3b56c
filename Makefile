# The README's two commands: `make demo` (the main job on an embedded default) and `make test`.
# Both work on a fresh Debian 12 machine as root: they install what they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv iproute2 lldpd
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench deps clean

$(STAMP): pyproject.toml
	@./scripts/install-deps $(APT_PACKAGES)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

deps: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nicinventory --sample list --vfs
	$(VENV)/bin/nicinventory --sample show ens1f0

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	@$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
