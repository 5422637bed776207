# make demo · make test · make bench — each creates .venv and installs everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.caspi-installed
RUNS   := runs
# Where pip finds torch. Empty: the default index, which on Linux x86-64 serves the CUDA build (several GB) and on
# this project's CPU machine resolves to its local CPU wheel. A CPU-only machine elsewhere:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: demo test bench setup clean-demo

setup: $(STAMP)

# torch first, with an exact pin, from TORCH_INDEX when set (the CPU build for a CPU-only machine); otherwise from
# the default index, whose Linux torch is the CUDA build. Then Caspi, then espeak-ng and chromium (the report's browser
# test; each fails when it cannot install its package), then slurm-wlm and munge (tests/slurm's one-node cluster; the
# same rule: installed, or the set-up stops and says the one command to run).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	@scripts/ensure-espeak
	@scripts/ensure-chromium
	@scripts/ensure-slurm
	touch $(STAMP)

# The main job (`caspi demo`, src/caspi/demo.py): synthesise Round 1's clean studio data and Round 2's noisy data of
# four domains (8 % planted errors) → Round 1, a tiny Qwen3-ASR from scratch → Phase 0 on Round 2's data with Round 1
# as a scorer → Round 2 from Round 1's weights, B→A, on the cleaned data (SIGTERM once, resumed) → eval and compare
# both rounds → runs/demo/report/report.html and runs/demo/summary.md. About 10 minutes on 2 cores; run it again
# after an interruption and the finished steps are kept.
demo: $(STAMP)
	$(BIN)/caspi demo --out $(RUNS)/demo --seed 0

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
	$(BIN)/python benchmarks/bench_demo.py --seeds 0 1 2
	$(BIN)/python benchmarks/bench_audit_real.py
	$(BIN)/python benchmarks/bench_checkpointing.py
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_cpu_bf16.py
	$(BIN)/python benchmarks/bench_plan_memory.py || test $$? -eq 2  # exit 2: no CUDA here, nothing to compare
	$(BIN)/python benchmarks/bench_audit_speed.py --n 2500
	$(BIN)/python benchmarks/bench_checkpoint.py
	$(BIN)/python benchmarks/bench_loop_overhead.py
	$(BIN)/python benchmarks/bench_loop_overhead.py --threads 1

clean-demo:
	rm -rf $(RUNS)/demo
