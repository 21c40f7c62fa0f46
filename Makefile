# goat: `make help` lists the targets.
PYTHON ?= python

.PHONY: help install test test-slow test-gpu lint bench

help:  ## this list
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install:  ## editable install with the test extras
	$(PYTHON) -m pip install -e '.[test]'

test:  ## the default test run (CPU, under 15 minutes on 2 cores)
	$(PYTHON) -m pytest -m "not slow and not gpu"

test-slow:  ## slow tests (CPU)
	$(PYTHON) -m pytest -m "slow"

test-gpu:  ## GPU-only tests (skip without CUDA)
	$(PYTHON) -m pytest -m "gpu"

lint:  ## ruff
	$(PYTHON) -m ruff check goat tests benchmarks

bench:  ## adapter speed/memory vs PEFT LoRA and SVD-init time; writes docs/benchmarks.md (needs a GPU)
	$(PYTHON) benchmarks/adapter_speed.py --out docs
