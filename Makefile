# make demo · make test · make bench — each creates .venv and installs everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.caspi-installed
DEMO   := data/demo
RUNS   := runs

.PHONY: demo test bench setup clean-demo

setup: $(STAMP)

# torch first, with an exact pin: here it takes the local CPU build, on a GPU machine the CUDA build. A plain
# `torch` requirement would pull several GB of CUDA wheels on a CPU machine.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@scripts/ensure-espeak
	touch $(STAMP)

# The main job, as far as it is built: synthesise → import → statistics → train a tiny Qwen3-ASR from scratch on
# CPU (periodic WER/CER on the eval split; resumable: run it again after an interruption). The Phase 0 audit and
# the evaluation report join it when they land.
demo: $(STAMP)
	$(BIN)/caspi synth --out $(DEMO) --n-train 1200 --n-eval 300 --seed 0 --error-rate 0.08
	$(BIN)/caspi import $(DEMO)/train.jsonl.gz --out $(DEMO)/imported/train.jsonl.gz
	$(BIN)/caspi stats $(DEMO)/imported/train.jsonl.gz
	$(BIN)/caspi train --recipe recipes/demo-cpu.yaml --out $(RUNS)/demo data.train_manifest=$(DEMO)/imported/train.jsonl.gz

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_padding.py
	$(BIN)/python benchmarks/bench_import.py

clean-demo:
	rm -rf $(DEMO) $(RUNS)/demo
