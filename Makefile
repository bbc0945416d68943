# qasa-vqa developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
DEMO_RUN ?= runs/demo
DEMO_DATA ?= demo_data
PYTEST_ARGS ?=
PRETRAIN_ARGS ?=
DEMO_CLIP_DIR ?= runs/demo-clip
DEMO_CLIP_ARGS ?=

.PHONY: help install test test-all test-faults lint format bench demo demo-views demo-data demo-clip pretrain clean

help: ## List the commands
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with dev extras (no-op when up to date)

test: $(STAMP) ## Run the test suite (skips tests marked slow; see test-all)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: $(STAMP) ## Run the whole fault suite (tests/faults, slow cases included): kills, bad data, bad numbers, bad files
	$(PY) -m pytest tests/faults tests/unit/test_checkpoint_io.py $(PYTEST_ARGS)

lint: $(STAMP) ## Check style and formatting with ruff
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: $(STAMP) ## Reformat and auto-fix with ruff
	$(PY) -m ruff check --fix src tests benchmarks
	$(PY) -m ruff format src tests benchmarks

bench: $(STAMP) ## Run the benchmarks (decode vs peers, training data, scoring); prints medians and ratios
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_swin_chunks.py

demo: $(STAMP) ## The whole method offline: data, pretraining, training, evaluation, scoring -> runs/demo/report.md
	$(PY) -m qasa_vqa.demo --out $(DEMO_RUN)

demo-views: $(STAMP) ## Generate a sample clip and draw what the models see (demo_output/views.png)
	$(PY) -m qasa_vqa demo --out $(DEMO_DIR)

demo-data: $(STAMP) ## Generate the demo corpus offline (demo_data/: rated clips, manifest, ST-VQRL tree)
	$(PY) -m qasa_vqa demo-data --out $(DEMO_DATA)

demo-clip: $(STAMP) demo-data ## Remake the shipped demo CLIP and measure it zero-shot (DEMO_CLIP_ARGS="--minutes 10 ...")
	$(PY) -m qasa_vqa demo-clip --out $(DEMO_CLIP_DIR) --corpus $(DEMO_DATA) $(DEMO_CLIP_ARGS)

pretrain: $(STAMP) ## ST-VQRL pretraining, CPU demo preset on demo_data/tree (PRETRAIN_ARGS="key=value ...")
	$(PY) -m qasa_vqa.pretrain $(PRETRAIN_ARGS)

clean: ## Remove caches, build outputs and demo output (keeps .venv)
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache $(DEMO_DIR)
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
