"""Helpers that the tests and the benchmarks share, each written once here.

- `torch_threads(n)`: torch's intra-op thread count for the length of a block.
- `synthesize_corpus(out_dir, **settings)`: a small synthesised corpus (espeak-ng), written quietly. Without
  settings it is the corpus the whole test session shares (`SHARED_CORPUS`; tests/conftest.py's `synth_corpus`
  fixture). `planted_errors(corpus)` reads a synthesised corpus's answer key.
- `tone(...)`, `metadata_cut(...)`: a sine clip; a cut whose audio file is never opened.
- `meta_model(family, size)`, `save_tiny_model(folder, texts)`: a published model's skeleton on the meta device; a
  tiny random model saved as a base-model folder.
- `FakeClock()`: a clock (seconds) for code that takes one (`clock=`), moved by hand through its `now`.

Part of the package so that benchmarks/ can use it too. It imports `caspi.data` and `caspi.models` only (nothing of
the layers above them, nothing under tests/) and not pytest.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from lhotse import MonoCut

from caspi.data.audio import SAMPLE_RATE
from caspi.data.cuts import DEFAULT_DOMAIN, make_cut
from caspi.data.synth import SynthSummary, synthesize
from caspi.models import get_family

# The corpus the test session shares: 24 training clips (6 per domain) with 6 planted errors (each kind once), 8 clean
# eval clips (2 per domain), sentences of 3-8 words. A test that needs other data synthesises its own and says why.
SHARED_CORPUS = {"n_train": 24, "n_eval": 8, "seed": 0, "error_rate": 0.25}


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch's intra-op thread count set to `n` inside the block and restored after it. One thread gives the same
    float reduction order in every run (bit-exact comparisons), and tiny models run faster on one thread than on
    several of a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synthesize_corpus(out_dir: str | Path, **settings) -> SynthSummary:
    """`caspi.data.synth.synthesize` into `out_dir` with `SHARED_CORPUS` updated by `settings` (any of its keyword
    arguments), two workers, no progress bar. Raises DependencyError without espeak-ng."""
    return synthesize(out_dir, **{**SHARED_CORPUS, "workers": 2, "progress": False, **settings})


def planted_errors(corpus: str | Path) -> dict[str, dict]:
    """A synthesised corpus's planted_errors.jsonl: cut id -> its record (`kind` and details), in file order."""
    lines = (Path(corpus) / "planted_errors.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["id"]: record for record in map(json.loads, lines)}


def tone(seconds: float, freq: float = 440.0, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    """A sine of `freq` Hz, `seconds` long at `sample_rate`: float32 (T,)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate  # (T,) seconds
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def metadata_cut(cut_id: str, seconds: float, text: str = "שלום", domain: str = DEFAULT_DOMAIN) -> MonoCut:
    """A 16 kHz cut of `seconds` whose audio file does not exist: for code that reads only durations, texts and
    domains (sampling, statistics, scoring against hypotheses)."""
    return make_cut(cut_id, f"/nonexistent/{cut_id}.flac", int(seconds * SAMPLE_RATE), text, domain)


def meta_model(family: str, size: str) -> torch.nn.Module:
    """The published `size` of `family` (e.g. "qwen3_asr" "1.7B", "whisper" "large-v3") built on the meta device
    from its reference config: the real parameter names and shapes, no memory, nothing downloaded."""
    from transformers import AutoModelForSpeechSeq2Seq  # maps both families' configs to their model classes

    config = get_family(family).reference_config(size)
    with torch.device("meta"):
        return AutoModelForSpeechSeq2Seq.from_config(config)


def save_tiny_model(folder: str | Path, texts: list[str], family: str = "qwen3_asr", **options) -> Path:
    """The family's tiny random model (`ModelFamily.tiny(texts, **options)`: size "xs", seed 0 unless given) and its
    processor saved to `folder`, as a base model or an exported one would be. Returns `folder`."""
    model, processor = get_family(family).tiny(texts, **options)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


class FakeClock:
    """A clock in seconds that stands still until a test moves `now`. It starts at 1000, not 0: code under test must
    use differences between readings, not absolute ones."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
