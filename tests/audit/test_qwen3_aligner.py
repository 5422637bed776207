"""The qwen3_aligner scorer on a tiny random `Qwen3ASRForTokenClassification` built offline.

Random weights give arbitrary timestamps, so these tests check the plumbing (prompt, batching, decoding, the
per-clip numbers and their ranges), not alignment quality; a scripted head checks the coverage arithmetic end to
end through transformers' own `decode_forced_alignment`.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from caspi.audit.scorers import AuditSample, Qwen3AlignerScorer, build_scorers, supported_aligner_languages
from caspi.config import Qwen3AlignerConfig, ScorersConfig
from caspi.errors import CheckpointError, ConfigError
from caspi.models.qwen3_asr import AUDIO_END, AUDIO_PAD, AUDIO_START, EOS, PAD, SPECIAL_TOKENS, TINY_SIZES
from caspi.models.tokenizer import train_unicode_bpe

SR = 16_000
TIMESTAMP = "<timestamp>"
NUM_CLASSES = 64  # timestamp classes of the tiny head (80 ms each: up to 5.12 s); the real aligner has 5000

# The forced-aligner prompt, written for this test to render what the converted checkpoint's template renders
# (transformers' convert_qwen3_asr_to_hf.py, FORCED_ALIGNER_CHAT_TEMPLATE; the same string as the original
# qwen-asr `encode_timestamp`): the audio placeholders, then every word followed by two <timestamp> markers, no chat
# turns. Pinned by `test_prompt_is_the_official_forced_aligner_format`.
ALIGNER_TEMPLATE = (
    "{%- set ns = namespace(audio='', words=[]) -%}"
    "{%- for message in messages -%}{%- if message['content'] is not string -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' -%}"
    "{%- set ns.audio = ns.audio + '<|audio_start|><|audio_pad|><|audio_end|>' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.words = ns.words + [part['text']] -%}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{{- ns.audio + ns.words | join('<timestamp><timestamp>') + '<timestamp><timestamp>' -}}"
)
TEXTS = ["the quick brown fox", "hello, world!", "jumps over the lazy dog"]


def tiny_aligner(texts=TEXTS, seed: int = 0):
    """A random toy `Qwen3ASRForTokenClassification` (Qwen3ASRFamily's "xs" dimensions) and its processor."""
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen3ASRConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForTokenClassification,
        Qwen3ASRProcessor,
    )

    backend = train_unicode_bpe(list(texts), [*SPECIAL_TOKENS, TIMESTAMP])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        unk_token="<unk>",
        extra_special_tokens={"audio_token": AUDIO_PAD, "audio_bos_token": AUDIO_START, "audio_eos_token": AUDIO_END},
    )
    processor = Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer, chat_template=ALIGNER_TEMPLATE
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, EOS, AUDIO_PAD, TIMESTAMP)}
    dims = TINY_SIZES["xs"]
    config = Qwen3ASRConfig(
        audio_config=dict(
            model_type="qwen3_asr_encoder", num_mel_bins=128, output_dim=dims["text"]["hidden_size"], **dims["audio"]
        ),
        text_config=dict(
            model_type="qwen3", vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=ids[PAD],
            **dims["text"],
        ),
        audio_token_id=ids[AUDIO_PAD],
        timestamp_token_id=ids[TIMESTAMP],
        pad_token_id=ids[PAD],
        eos_token_id=ids[EOS],
        num_labels=NUM_CLASSES,
        architectures=["Qwen3ASRForTokenClassification"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ASRForTokenClassification(config)
    return model.eval(), processor


class ScriptedHead(torch.nn.Module):
    """The tiny aligner, run for real, with its logits replaced: row r's k-th <timestamp> gets class plan[r][k]."""

    def __init__(self, model, plan: list[list[int]]):
        super().__init__()
        self.inner, self.plan, self.row = model, plan, 0

    @property
    def config(self):
        return self.inner.config

    def forward(self, **inputs):
        logits = torch.zeros_like(self.inner(**inputs).logits)  # (B, L, classes)
        for b, ids in enumerate(inputs["input_ids"]):
            positions = (ids == self.config.timestamp_token_id).nonzero().flatten()
            classes = self.plan[self.row]
            assert len(classes) == len(positions)
            logits[b, positions, torch.tensor(classes)] = 1.0
            self.row += 1
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def aligner():
    return tiny_aligner()


def noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def sample(i: int, text: str, seconds: float) -> AuditSample:
    return AuditSample(id=f"s{i}", domain="d", text=text, duration=seconds, audio=noise(seconds, i))


def english(**overrides) -> Qwen3AlignerConfig:
    return Qwen3AlignerConfig(enabled=True, language="English", **overrides)


def test_prompt_is_the_official_forced_aligner_format(aligner):
    _, processor = aligner
    inputs, words = processor.prepare_forced_aligner_inputs(noise(1.0, 0), "the quick, brown fox!", language="English")
    assert words == [["the", "quick", "brown", "fox"]]
    rendered = processor.tokenizer.decode(inputs["input_ids"][0])
    audio_tokens = int((inputs["input_ids"][0] == processor.audio_token_id).sum())
    assert audio_tokens == 13  # 1 s of audio → 13 encoder frames
    marks = TIMESTAMP * 2
    assert rendered == (
        AUDIO_START + AUDIO_PAD * audio_tokens + AUDIO_END + f"the{marks}quick{marks}brown{marks}fox{marks}"
    )


def test_measure_on_noise_clips_gives_json_numbers_in_range(aligner):
    samples = [sample(0, TEXTS[0], 1.0), sample(1, TEXTS[1], 2.0), sample(2, TEXTS[2], 1.5), sample(3, "?!", 1.0)]
    scorer = Qwen3AlignerScorer(english(batch_size=2), aligner=aligner)
    measures = scorer.measure(samples)
    json.dumps(measures)  # cached in scores.jsonl
    assert [m["words"] for m in measures] == [4, 2, 5, 0]
    for s, m in zip(samples, measures):
        assert set(m) == {"words", "aligned_words", "coverage", "span_s", "duration_s"}
        assert m["duration_s"] == pytest.approx(s.duration)
        assert 0 <= m["aligned_words"] <= m["words"]
        assert 0.0 <= m["coverage"] <= 1.0
        assert m["coverage"] == (m["aligned_words"] / m["words"] if m["words"] else 0.0)
        assert 0.0 <= m["span_s"] <= NUM_CLASSES * 0.08
    assert measures[3] == {"words": 0, "aligned_words": 0, "coverage": 0.0, "span_s": 0.0, "duration_s": 1.0}
    # batching does not change the numbers
    assert Qwen3AlignerScorer(english(batch_size=8), aligner=aligner).measure(samples) == measures


def test_coverage_counts_words_placed_inside_the_clip(aligner):
    model, processor = aligner
    plan = [
        [1, 2, 3, 4, 5, 6],  # 3 words at 0.08-0.16, 0.24-0.32, 0.40-0.48 s: all placed
        [14, 15, 20, 21],  # 1 s clip: 1.12-1.20 and 1.60-1.68 s lie past 1.0 + 0.08 s: none placed
        [3, 3, 5, 6],  # a zero-length word, then 0.40-0.48 s: half placed
    ]
    samples = [sample(0, "hello world again", 2.0), sample(1, "", 1.0), sample(2, "lazy dog", 1.0),
               sample(3, "brown fox", 1.0)]
    scorer = Qwen3AlignerScorer(english(batch_size=2), aligner=(ScriptedHead(model, plan), processor))
    a, empty, b, c = scorer.measure(samples)
    assert a == {"words": 3, "aligned_words": 3, "coverage": 1.0, "span_s": pytest.approx(0.40), "duration_s": 2.0}
    assert empty["words"] == 0 and empty["coverage"] == 0.0
    assert b == {"words": 2, "aligned_words": 0, "coverage": 0.0, "span_s": pytest.approx(0.56), "duration_s": 1.0}
    assert c == {"words": 2, "aligned_words": 1, "coverage": 0.5, "span_s": pytest.approx(0.24), "duration_s": 1.0}
    assert scorer.flag(samples, [a, empty, b, c]) == [[], ["aligner_low_coverage"], ["aligner_low_coverage"], []]


def test_summarise_edges():
    seg = 0.08
    m = Qwen3AlignerScorer.summarise(4, [(0.0, 0.5), (0.5, 0.5), (0.6, 1.08), (1.08, 1.2)], 1.0, seg)
    # zero length and past duration + one segment are not placed; ending exactly at 1.0 + 0.08 is
    assert (m["aligned_words"], m["coverage"], m["span_s"]) == (2, 0.5, pytest.approx(1.2))
    assert Qwen3AlignerScorer.summarise(0, [], 2.0, seg) == {
        "words": 0, "aligned_words": 0, "coverage": 0.0, "span_s": 0.0, "duration_s": 2.0}


def test_flag_uses_min_coverage():
    scorer = Qwen3AlignerScorer(english(min_coverage=0.6))
    measures = [{"coverage": c} for c in (0.0, 0.59, 0.6, 1.0)]
    assert scorer.flag([None] * 4, measures) == [["aligner_low_coverage"], ["aligner_low_coverage"], [], []]


def test_supported_language_builds_without_loading(monkeypatch):
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("loaded at construction")

    monkeypatch.setattr(transformers.Qwen3ASRForTokenClassification, "from_pretrained", boom)
    scorer = Qwen3AlignerScorer(english(revision="abc"))
    assert scorer._aligner is None
    assert scorer.cache_key == "1:model=Qwen/Qwen3-ForcedAligner-0.6B-hf,revision=abc,language=English"
    built = build_scorers(ScorersConfig(qwen3_aligner={"enabled": True, "language": "English"}))
    assert [s.name for s in built] == ["text", "rate", "vad", "qwen3_aligner"]
    assert "English" in supported_aligner_languages() and "Hebrew" not in supported_aligner_languages()


def test_unreachable_model_id_gives_checkpoint_error_naming_it(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    for cls in (transformers.AutoConfig, transformers.Qwen3ASRForTokenClassification, transformers.AutoProcessor):
        monkeypatch.setattr(cls, "from_pretrained", offline)
    scorer = Qwen3AlignerScorer(english(model="someone/aligner-hf"))
    with pytest.raises(CheckpointError, match=r"someone/aligner-hf.*OSError"):
        scorer.measure([sample(0, "hello", 1.0)])


def test_weights_failing_after_the_config_still_name_the_id(monkeypatch, aligner):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("404 Client Error")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: aligner[0].config)
    monkeypatch.setattr(transformers.Qwen3ASRForTokenClassification, "from_pretrained", offline)
    with pytest.raises(CheckpointError, match=r"'someone/aligner-hf' at revision 'v1'.*404"):
        Qwen3AlignerScorer(english(model="someone/aligner-hf", revision="v1")).measure([sample(0, "hi", 1.0)])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(thinker_config={}), "original Qwen3-ASR layout"),
        (dict(architectures=["Qwen3ASRForConditionalGeneration"]), "not the forced aligner"),
    ],
)
def test_wrong_checkpoint_kinds_are_refused(monkeypatch, aligner, change, message):
    import transformers

    def fake_config(*args, **kwargs):
        config = aligner[0].config.__class__.from_dict(aligner[0].config.to_dict())
        for key, value in change.items():
            object.__setattr__(config, key, value)
        return config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    with pytest.raises(CheckpointError, match=message):
        Qwen3AlignerScorer(english(model="Qwen/Qwen3-ForcedAligner-0.6B")).measure([sample(0, "hi", 1.0)])


def test_japanese_needs_its_word_splitter():
    from transformers.utils.import_utils import is_nagisa_available

    if is_nagisa_available():
        Qwen3AlignerScorer(Qwen3AlignerConfig(enabled=True, language="Japanese"))
    else:
        with pytest.raises(ConfigError, match="pip install nagisa"):
            Qwen3AlignerScorer(Qwen3AlignerConfig(enabled=True, language="Japanese"))
