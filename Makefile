# ego4d-ft: `make demo` and `make test` are the whole quick start.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch comes first and separately: the CPU build here (2.13.0, on local disk), or whatever CUDA
# build the machine already has. Letting pip resolve "torch" freely pulls a multi-GB CUDA wheel.
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MLFLOW_DISABLE_TELEMETRY := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SAMPLE := data/sample
# The demo learns from many distinct short clips seen once (benchmarks/RESULTS.md, "What direction needs").
DEMO_CLIPS ?= 16000
DEMO_SEED ?= 0
DEMO_CONFIG := configs/demo_cpu.yaml
# Three pytest workers on 2 cores, each file on one worker (files keep their order and shared fixtures): much of
# the suite waits on subprocesses, servers and deliberate sleeps, so a third worker fills idle CPU. Measured on
# this 2-core machine (2026-12-01): 8 min 26 s with 2 workers, 6 min 52 s with 3. tests/conftest.py gives each
# worker its share of the cores (OMP_NUM_THREADS), without which 3 workers took 7 min 59 s (2026-12-02).
TEST_WORKERS ?= 3

.PHONY: install demo test test-learning lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if python3 -c "import torch" 2>/dev/null; then \
	    echo "reusing the system torch: $$(python3 -c 'import torch; print(torch.__version__)')"; \
	    python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; \
	fi
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import app.cli, torch, transformers, decord" 
	@touch $(STAMP)

demo: install
	@start=$$(date +%s); \
	$(VENV)/bin/ego4d-ft data sample --out $(SAMPLE) --clips $(DEMO_CLIPS) --seed $(DEMO_SEED) --size 56 --frames 8 \
	  --object-size 0.3 --held-out 240 --no-audio --workers 2 && \
	$(VENV)/bin/ego4d-ft baseline --config $(DEMO_CONFIG) && \
	$(VENV)/bin/ego4d-ft train --mode qlora --config $(DEMO_CONFIG) --set training.seed=$(DEMO_SEED) && \
	$(VENV)/bin/ego4d-ft compare --config $(DEMO_CONFIG) && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; open results/report/report.html or run: .venv/bin/ego4d-ft ui"

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not learning"

# The proof that the pipeline learns: a 6,000-clip demo-sized run beats chance on colour and direction, and a
# 3,000-clip multiple-choice run beats M0 on the likelihood score (~8 min on 2 cores). CI runs it after make test.
test-learning: install
	$(VENV)/bin/pytest -q -m learning

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf results mlruns/* $(SAMPLE) .cache .pytest_cache
