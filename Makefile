# callvault: `make run` and `make test` do the whole set-up on a fresh Debian
# machine (system packages, a .venv at the repo root, the Cython extensions).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= .data
# libopus-dev: linked by ext/_opus.pyx; opus-tools, ffmpeg, sox: real decoders
# and encoders the tests compare against; espeak-ng: speech for quality tests;
# faketime: end-to-end tests move the wall clock past retention ends;
# libpcap0.8 is not needed (dpkt reads captures).
APT_PKGS := build-essential pkg-config libopus-dev opus-tools ffmpeg sox espeak-ng faketime
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test bench stress sysdeps setup build lint clean

sysdeps:
	@missing=""; \
	for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The SDK (clients/python, callvault-client) first: the server imports its
# generated stubs. Both editable, so `make build` regenerates in place.
# grpcio-tools is build time only (the stubs): here and in the dev extra,
# never a runtime dependency of either package.
$(VENV)/.installed: pyproject.toml setup.py clients/python/pyproject.toml | sysdeps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel grpcio-tools
	$(PY) -m pip install -q -e clients/python
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: sysdeps $(VENV)/.installed

# gRPC stubs from proto/ (build products: never edited, never committed)
build: setup
	$(PY) clients/python/genproto.py >/dev/null
	$(PY) setup.py -q build_ext --inplace

lint: build
	$(VENV)/bin/ruff check engine tests benchmarks clients/python
	$(VENV)/bin/ruff format --check engine tests benchmarks clients/python
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

bench: build
	$(VENV)/bin/pytest -q benchmarks --benchmark-columns=min,median,mean,rounds \
	  --benchmark-sort=name --benchmark-json=benchmarks/last-run.json
	$(PY) -m benchmarks.report benchmarks/last-run.json

# The crash tests with many more SIGKILLs than CI's 100 (nightly).
STRESS_KILLS ?= 1000
stress: build
	CALLVAULT_STRESS_KILLS=$(STRESS_KILLS) $(VENV)/bin/pytest -q -p no:cacheprovider \
	  tests/e2e/test_vault_crash.py tests/e2e/test_segment_crash.py

# A sample call in the embedded vault $(DATA)/vault, then the server on it
# (in the foreground: Ctrl-C or SIGTERM stops it gracefully).
LISTEN ?= 127.0.0.1:7443
run: build
	$(VENV)/bin/callvault demo --data $(DATA) --listen $(LISTEN)
	exec $(VENV)/bin/callvault serve --data $(DATA)/vault --listen $(LISTEN)

clean:
	rm -rf build $(VENV) ext/*.c engine/callvault/*.so .pytest_cache .mypy_cache .ruff_cache
