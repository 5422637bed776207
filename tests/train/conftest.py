"""A small synthesised corpus and a tiny two-phase recipe shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from caspi.testing import synthesize_corpus, torch_threads


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory, espeak) -> Path:
    """32 + 8 clean clips of 2-4 words, seed 5. Not the shared `synth_corpus`: the golden losses in test_loop.py were
    measured on exactly these clips."""
    out = tmp_path_factory.mktemp("train-corpus")
    synthesize_corpus(out, n_train=32, n_eval=8, seed=5, error_rate=0.0, min_words=2, max_words=4)
    return out


@pytest.fixture
def golden_losses() -> list[float]:
    """Losses of the first 6 optimizer steps of `make_recipe()` with train.max_steps=6, recorded from this code on CPU
    (torch 2.13, transformers 5.23, espeak-ng 1.51). A change that moves them changed what the loop computes.
    Re-recorded when Qwen3-ASR clips became batch-invariant (each clip's features computed alone instead of its audio
    padded to the batch's longest; `Qwen3ASRFamily.build_inputs`): the first step moved most, 4.039 → 3.890."""
    return [3.89027, 4.05114, 3.60280, 3.84446, 3.78185, 3.79890]


@pytest.fixture
def make_recipe(train_corpus, tmp_path):
    """`make_recipe(name, **sections)` writes a tiny recipe (see `tiny_recipe`) and returns its path."""
    return lambda name="recipe", **sections: tiny_recipe(train_corpus, tmp_path / f"{name}.yaml", **sections)


@pytest.fixture
def read_run():
    """Readers of a run folder's metrics.jsonl: `.losses(run)`, `.evals(run)`, `.events(run)`."""

    class Reader:
        losses = staticmethod(train_losses)
        evals = staticmethod(eval_records)
        events = staticmethod(lambda run: [r for r in _records(run) if r["kind"] == "event"])

    return Reader


def tiny_recipe(corpus: Path, path: Path, **sections) -> Path:
    """A two-phase recipe on the tiny "xs" Qwen3-ASR: phase B (projector, top LLM layer, LM head) in epoch 1, phase A
    (also the top audio layer) from epoch 2; accumulation 2; SpecAugment, speed perturbation and the CTC head on, so
    every source of randomness a resume must restore is exercised. `sections` update the recipe's sections."""
    recipe = {
        "name": "tiny-test",
        "model": {"family": "qwen3_asr", "tiny": "xs", "dtype": "float32"},
        "hardware": {"accelerator": "cpu"},
        "data": {"train_manifest": str(corpus / "train.jsonl.gz"), "eval_manifest": str(corpus / "eval.jsonl.gz"),
                 "num_workers": 0},
        "train": {"epochs": 2, "micro_batch": 4, "effective_batch": 8, "num_buckets": 2, "seed": 1,
                  "warmup_steps": 2, "precision": "fp32", "gradient_checkpointing": False, "ctc_aux_weight": 0.3,
                  "log_every_steps": 1, "save_every_steps": 3, "keep_last": 2},
        "unfreeze": {
            "groups": {"projector": {}, "llm_top": {"top": 1}, "lm_head": {}, "audio_top": {"top": 1}},
            "phases": [
                {"name": "B", "start_epoch": 1, "lr": {"projector": 3e-3, "llm_top": 2e-3, "lm_head": 2e-3}},
                {"name": "A", "start_epoch": 2,
                 "lr": {"projector": 2e-3, "llm_top": 1e-3, "lm_head": 1e-3, "audio_top": 1e-3}},
            ],
        },
        "augment": {"speed_factors": [0.9, 1.0, 1.1],
                    "spec_augment": {"enabled": True, "time_masks": 2, "max_freq_width": 10}},
        "eval": {"every_steps": 4, "samples": 4, "batch_size": 4, "max_new_tokens": 12},
        "tracking": {"tensorboard": False},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every train record in RUN/metrics.jsonl."""
    return [(r["step"], r["loss"]) for r in _records(run_dir) if r["kind"] == "train"]


def eval_records(run_dir: Path) -> list[dict]:
    """Eval records without their wall-clock field."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in _records(run_dir) if r["kind"] == "eval"]


@pytest.fixture(scope="session")
def reference_run(train_corpus, tmp_path_factory):
    """An uninterrupted in-process run of the tiny two-phase recipe: (recipe path, run folder, TrainResult). The
    interruption tests compare their resumed runs against it."""
    from caspi.config import load_recipe
    from caspi.train.loop import train

    folder = tmp_path_factory.mktemp("reference")
    recipe = tiny_recipe(train_corpus, folder / "recipe.yaml")
    with torch_threads(1):  # as in the runs compared with it (`single_thread`)
        result = train(load_recipe(recipe), folder / "run", progress=False)
    return recipe, folder / "run", result


@pytest.fixture
def single_thread():
    """Bit-exact comparisons between runs need the same float reduction order: one intra-op thread in this process
    (the trainer subprocesses of the kill tests get OMP_NUM_THREADS=1). Other tests may have changed the count."""
    with torch_threads(1):
        yield
