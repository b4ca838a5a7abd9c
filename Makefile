# Two commands do all set-up on a fresh machine:
#   make train   create .venv if missing, install, train the default (CPU smoke) recipe, evaluate its checkpoint
#   make test    create .venv if missing, install with test extras, lint, run every unit and mechanism test
# and CI runs one more (.ci/run):
#   make proof   the end-to-end claims (tests/proof/): recipes reaching their bars, multi-process resume, ...
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/smoke-default

.PHONY: train test proof install lint bench-smoke bench-data bench-index bench-streaming bench-gpu bench-stack gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# The marker is rebuilt when pyproject.toml changes, so a second `make` does not reinstall.
# mosaicml-streaming goes in without its declared dependencies (why: pyproject.toml); those it imports are there.
# --no-cache-dir: torch's CUDA wheels are ~4.4 GB installed (.venv ~6.7 GB in all); a cached second copy of
# them once filled a CI machine's disk.
STREAMING := mosaicml-streaming==0.13.0
$(VENV)/.installed: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --no-cache-dir -e ".[test]"
	$(PY) -m pip install --no-cache-dir --no-deps "$(STREAMING)"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py recipes/smoke.yaml run_name=smoke-default save_folder=$(RUN_DIR) save_overwrite=true
	$(PY) evaluate.py --checkpoint $(RUN_DIR)/latest-rank0.pt --output $(RUN_DIR)/eval.json

# Each tier's per-test limit (fixtures included): a hang fails with its traceback instead of stalling CI. A
# mechanism test over a minute belongs in make proof or gets cheaper (docs/testing.md).
TEST_TIMEOUT_S ?= 180
PROOF_TIMEOUT_S ?= 900
PYTEST_ARGS ?=

# Runs $(1), then prints its wall time as the last line, whatever its exit status.
timed = start=$$(date +%s); $(1); status=$$?; elapsed=$$(( $$(date +%s) - start )); \
	echo "$(2): $$(( elapsed / 60 )) min $$(( elapsed % 60 )) s wall time ($(3)), exit status $$status"; exit $$status

test:
	@$(call timed,$(MAKE) --no-print-directory install && $(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . \
	&& $(PY) -m pytest -q -m "not proof" --timeout=$(TEST_TIMEOUT_S) $(PYTEST_ARGS),make test,install + lint + tests)

proof:
	@$(call timed,$(MAKE) --no-print-directory install \
	&& $(PY) -m pytest -q -m proof --timeout=$(PROOF_TIMEOUT_S) $(PYTEST_ARGS),make proof,install + end-to-end tests)

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
