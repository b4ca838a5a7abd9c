# Two commands do all set-up on a fresh machine:
#   make train   create .venv if missing, install, train the default (CPU smoke) recipe, evaluate its checkpoint
#   make test    create .venv if missing, install with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/smoke-default

.PHONY: train test install lint bench-smoke bench-data bench-index bench-streaming bench-gpu bench-stack gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# The marker is rebuilt when pyproject.toml changes, so a second `make` does not reinstall.
# mosaicml-streaming goes in without its declared dependencies (why: pyproject.toml); those it imports are there.
# --no-cache-dir: torch's CUDA wheels are ~4 GB; a cached second copy of them once filled a CI machine's disk.
STREAMING := mosaicml-streaming==0.13.0
$(VENV)/.installed: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --no-cache-dir -e ".[test]"
	$(PY) -m pip install --no-cache-dir --no-deps "$(STREAMING)"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py recipes/smoke.yaml run_name=smoke-default save_folder=$(RUN_DIR) save_overwrite=true
	$(PY) evaluate.py --checkpoint $(RUN_DIR)/latest-rank0.pt --output $(RUN_DIR)/eval.json

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-smoke: install
	$(PY) bench/smoke_recipe.py --output bench/results/smoke_recipe.json

bench-data: install
	$(PY) bench/data_pipeline.py --output bench/results/data_pipeline.json

bench-index: install
	$(PY) bench/file_index.py --output bench/results/file_index.json

bench-streaming: install
	$(PY) bench/streaming.py --output bench/results/streaming.json

bench-stack: install
	$(PY) bench/stack_overhead.py --output bench/results/stack_overhead.json

bench-gpu: install
	$(PY) bench/gpu_throughput.py --output bench/results/gpu_throughput.json

# Proves a GPU machine in ~8 minutes: environment, throughput table, the g4dn_xlarge recipe preempted and resumed.
gpu-check: install
	$(PY) bench/gpu_check.py --output bench/results/gpu_check.json

clean:
	rm -rf runs .pytest_cache
