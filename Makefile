# `make demo` and `make test` do all set-up on a fresh Debian/Ubuntu machine, and are idempotent:
# system packages FFCV needs and the headless browser the report-page tests open pages in
# (installed when root, otherwise the exact command is printed), a
# virtual environment in .venv, torch, then the project with its dev extras.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.engine-installed
TORCH := torch==2.14.1 torchvision==0.29.1
APT_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev
# Optional: installed where the distribution has it; without it the browser tests skip, saying why.
APT_OPTIONAL := chromium-headless-shell

.PHONY: demo test bench bench-quick bench-history install system-packages clean

demo: $(STAMP)
	$(BIN)/engine demo

test: $(STAMP)
	$(BIN)/pytest -q

# Every bench run is saved (pytest-benchmark JSON, machine and commit included) under
# $(BENCH_STORAGE); `make bench-history` compares the tracked ratios across runs (bench/history.py).
BENCH_STORAGE ?= .benchmarks
BENCH_ARGS := -q --benchmark-only --benchmark-columns=min,median,rounds --benchmark-autosave \
	--benchmark-storage=$(BENCH_STORAGE)

bench: $(STAMP)
	$(BIN)/pytest bench $(BENCH_ARGS)

# CI's quick bench: tracked ratios only, every side on one torch thread (a busy machine then slows
# each side alike); a ratio under its CI floor fails.
bench-quick: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest bench -m quick --ci-floors $(BENCH_ARGS)

bench-history: $(STAMP)
	$(BIN)/python -m bench.history --storage $(BENCH_STORAGE)

install: $(STAMP)

system-packages:
	@need="$(APT_PACKAGES)"; \
	command -v g++ >/dev/null || need="$$need g++"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || need="$$need python3-venv"; \
	$(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  || need="$$need python3-dev"; \
	missing=""; for p in $$need; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	optional=""; for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || optional="$$optional $$p"; done; \
	if [ -n "$$missing$$optional" ] && [ "$$(id -u)" = 0 ]; then apt-get update -qq; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi; \
	for p in $$optional; do \
	  if [ "$$(id -u)" = 0 ] && apt-cache policy $$p 2>/dev/null | grep -q 'Candidate: [0-9]'; then \
	    echo "installing system package $$p"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$p >/dev/null \
	      || echo "note: $$p could not be installed; the tests that need it will skip" >&2; \
	  else \
	    echo "note: $$p is not installed (sudo apt-get install -y $$p); the tests that need it will skip" >&2; \
	  fi; \
	done

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Torch first: the project depends on it, and any other torch would pull gigabytes.
$(STAMP): pyproject.toml setup.cfg | system-packages $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) out .pytest_cache .benchmarks
