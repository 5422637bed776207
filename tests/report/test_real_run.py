"""The report of a real run: the tiny two-phase Qwen3-ASR trained by `caspi train` on the audit's cleaned manifest,
preempted (as by SIGTERM) in its first epoch and resumed by the same command. run.json records the resume (the
metrics file is cut back to the checkpoint, so it is the only trace), commands.jsonl both starts, and the report
marks the resume and the phase switch on the curves."""

from __future__ import annotations

import json
import signal

import yaml

from caspi.cli import main
from caspi.report.build import build_report
from caspi.report.commands import read_commands
from caspi.testing import torch_threads
from caspi.train import loop


def test_a_preempted_and_resumed_run_is_marked_in_its_report(project, synth_corpus, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny-round2",
        "model": {"family": "qwen3_asr", "tiny": "xs", "dtype": "float32"},
        "hardware": {"accelerator": "cpu"},
        "data": {"train_manifest": str(project / "phase0" / "cleaned.jsonl.gz"),
                 "eval_manifest": str(synth_corpus.eval_manifest), "num_workers": 0},
        "train": {"epochs": 2, "micro_batch": 4, "effective_batch": 4, "num_buckets": 1, "seed": 1,
                  "warmup_steps": 1, "precision": "fp32", "gradient_checkpointing": False, "log_every_steps": 1,
                  "save_every_steps": 100},
        "unfreeze": {"groups": {"projector": {}, "lm_head": {}, "audio_top": {"top": 1}},
                     "phases": [{"name": "B", "start_epoch": 1, "lr": {"projector": 3e-3, "lm_head": 2e-3}},
                                {"name": "A", "start_epoch": 2, "lr": {"projector": 2e-3, "lm_head": 1e-3,
                                                                       "audio_top": 1e-3}}]},
        "eval": {"every_steps": 3, "samples": 4, "batch_size": 4, "max_new_tokens": 6},
        "tracking": {"tensorboard": False},
    }), encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", "--recipe", str(recipe), "--out", str(run), "--quiet"]
    calls = {"n": 0}
    original = loop.TrainingRun._forward_backward

    def preempted_after_two(self, batch, sync):  # as a SIGTERM during step 3 (the handler only sets the signal)
        result = original(self, batch, sync)
        calls["n"] += 1
        if calls["n"] == 2:
            self.preempt.signal = signal.SIGTERM
        return result

    with torch_threads(1):
        monkeypatch.setattr(loop.TrainingRun, "_forward_backward", preempted_after_two)
        assert main(argv) == 143
        monkeypatch.undo()
        assert main(argv) == 0

    meta = json.loads((run / "run.json").read_text())
    assert [(r["step"], r["checkpoint"]) for r in meta["resumes"]] == [(2, "step-000002")]
    assert [c["exit_code"] for c in read_commands(run)] == [143, 0]
    result = build_report([project / "phase0", run], tmp_path / "report", max_samples=2)
    section = result.runs[0]
    assert [r["step"] for r in section.resumes] == [2]
    assert [name for _, name in section.phases] == ["B", "A"] and section.phases[1][0] > 2
    assert section.evals and (result.out_dir / section.curves).stat().st_size > 10_000
    facts = dict(section.facts)
    assert facts["resumed"] == "at step 2 (step-000002)"
    html = result.page.read_text()
    assert "exit 143 (preempted: saved a checkpoint; the next start resumes)" in html
