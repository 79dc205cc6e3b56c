# The README's two commands: `make demo` (the main job on an embedded default) and `make test`.
# Both work on a fresh Debian 12 machine as root: they install what they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv iproute2 lldpd netconfd openssh-server openssh-client iputils-ping \
	dnsmasq-base libcap2-bin passwd
STAMP := $(VENV)/.installed

.PHONY: demo sample test lint format bench deps clean proto

$(STAMP): pyproject.toml
	@./scripts/install-deps $(APT_PACKAGES)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[test]'
	@# fake-switches (a stateful Cisco CLI for the driver tests) pins Twisted<17, which fails on 3.11.
	@$(PY) -m pip install --quiet --no-deps fake-switches==1.5.0
	@$(PY) -m pip install --quiet twisted netaddr tftpy
	@touch $(STAMP)

deps: $(STAMP)

# The whole system on a simulated node and TOR: pods get VFs, the TOR is programmed, the pings
# and the teardown are checked (nsm-lab demo; exit 0 only if every expectation held).
demo: $(STAMP)
	$(VENV)/bin/nsm-lab demo

# The bundled sample host: its inventory, then the device plugin's pools on it.
sample: $(STAMP)
	$(VENV)/bin/nicinventory --sample list --vfs
	$(VENV)/bin/nicinventory --sample show ens1f0
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(VENV)/bin/nicinventory fake-sysfs "$$tmp/sys" >/dev/null && \
	  echo "sriov-device-plugin pools (configs/sriov-device-plugin.yaml on the sample host):" && \
	  $(VENV)/bin/sriov-device-plugin --config-file configs/sriov-device-plugin.yaml \
	    --sysfs-root "$$tmp/sys" pools

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

proto: $(STAMP)  # regenerate sriov_nsm_wire/ from proto/
	$(PY) -m sriov_nsm_wire.regen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
