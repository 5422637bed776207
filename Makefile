# make demo · make test · make bench — each creates .venv and installs everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.caspi-installed
DEMO   := data/demo
RUNS   := runs
# Where pip finds torch. Empty: the default index, which on Linux x86-64 serves the CUDA build (several GB) and on
# this project's CPU machine resolves to its local CPU wheel. A CPU-only machine elsewhere:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: demo test bench setup clean-demo

setup: $(STAMP)

# torch first, with an exact pin, from TORCH_INDEX when set (the CPU build for a CPU-only machine); otherwise from
# the default index, whose Linux torch is the CUDA build. Then Caspi, then espeak-ng and chromium (the report's browser
# test; each fails when it cannot install its package).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	@scripts/ensure-espeak
	@scripts/ensure-chromium
	touch $(STAMP)

# The main job: synthesise (8 % planted errors) → import → statistics → Phase 0 audit (exit 3 stops here on STOP)
# → train a tiny Qwen3-ASR from scratch on CPU on the cleaned manifest, gated by the audit's report (run it again
# after an interruption and it resumes) → evaluate the untrained base and the trained model per domain and compare
# them (CSV, JSON, Markdown, PNG in runs/demo-report).
demo: $(STAMP)
	$(BIN)/caspi synth --out $(DEMO) --n-train 1200 --n-eval 300 --seed 0 --error-rate 0.08
	$(BIN)/caspi import $(DEMO)/train.jsonl.gz --out $(DEMO)/imported/train.jsonl.gz
	$(BIN)/caspi stats $(DEMO)/imported/train.jsonl.gz
	$(BIN)/caspi audit --manifest $(DEMO)/imported/train.jsonl.gz --out $(RUNS)/demo-phase0 --recipe recipes/demo-cpu.yaml
	$(BIN)/caspi train --recipe recipes/demo-cpu.yaml --out $(RUNS)/demo \
		data.train_manifest=$(RUNS)/demo-phase0/cleaned.jsonl.gz gate.report=$(RUNS)/demo-phase0/alignment_report.json
	$(BIN)/caspi compare $(RUNS)/demo/base $(RUNS)/demo --manifest $(DEMO)/eval.jsonl.gz --recipe recipes/demo-cpu.yaml \
		--names untrained trained --out $(RUNS)/demo-report

# A test that needs espeak-ng fails instead of skipping without it (tests/conftest.py); CI also sets CI=true.
test: $(STAMP)
	CASPI_REQUIRE_ESPEAK=1 $(BIN)/python -m pytest -q

# Every table of benchmarks/RESULTS.md, in its order, each script making its own data. bench_learning makes the
# demo corpus (synth → import → audit) and trains recipes/demo-cpu.yaml per seed; its seed-0 run is the model of
# the audit's asr-scorer row, so that row runs after it, on the quality row's corpus.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_padding.py
	$(BIN)/python benchmarks/bench_import.py
	$(BIN)/python benchmarks/bench_vad.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_audit_quality.py --n 2500 --seed 1
	$(BIN)/python benchmarks/bench_learning.py --seeds 0 1
	$(BIN)/python benchmarks/bench_audit_quality.py --corpus runs/bench-audit/corpus-2500-seed1 --out runs/bench-audit-asr \
		audit.scorers.asr.enabled=true audit.scorers.asr.model=runs/bench-learning/seed-0 \
		audit.scorers.asr.max_new_tokens=64 audit.scorers.asr.batch_size=32
	$(BIN)/python benchmarks/bench_audit_model.py --seed 0
	$(BIN)/python benchmarks/bench_audit_real.py
	$(BIN)/python benchmarks/bench_audit_speed.py --n 2500
	$(BIN)/python benchmarks/bench_checkpoint.py
	$(BIN)/python benchmarks/bench_loop_overhead.py
	$(BIN)/python benchmarks/bench_loop_overhead.py --threads 1

clean-demo:
	rm -rf $(DEMO) $(RUNS)/demo $(RUNS)/demo-phase0 $(RUNS)/demo-report
