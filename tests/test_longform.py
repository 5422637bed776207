"""Long recordings (`caspi.longform`): chunk planning at silences and at the cap, seams, loops, batching across
recordings, and a several-minute synthetic recording decoded end to end by `caspi eval` with a tiny model trained
here to know its sentences."""

from __future__ import annotations

import json

import jiwer
import numpy as np
import pytest
import torch
from lhotse import CutSet

from caspi.cli import main
from caspi.config import EvalConfig
from caspi.data import synth
from caspi.data.audio import write_flac
from caspi.data.cuts import make_cut, write_manifest
from caspi.errors import ConfigError
from caspi.longform import Chunk, chunk_limits, decode_long, is_loop, join_chunks, plan_chunks, seam_overlap
from caspi.models import get_family
from caspi.testing import tone, torch_threads

SR = 16_000


# --- a long recording of known sentences and pauses --------------------------------------------------------------

def _sentences() -> list[tuple[str, np.ndarray]]:
    """Five sentences of distinct first words whose espeak audio lasts 2.0-3.0 s: one of them with its pauses fits a
    4.2 s chunk, two never do."""
    picked: list[tuple[str, np.ndarray]] = []
    for text in synth.sentences(60, seed=3, min_words=4, max_words=5):
        audio = synth.speak(text)
        if 2.0 <= len(audio) / SR <= 3.0 and all(text.split()[0] != t.split()[0] for t, _ in picked):
            picked.append((text, audio))
        if len(picked) == 5:
            return picked
    raise AssertionError("fewer than 5 sentences of 2-3 s")


def _join(sentences, seconds: float, seed: int):
    """(recording (T,), sentence order, [(start_s, end_s)] of each sentence's audio): the sentences in a seeded
    order with 0.5-1.0 s pauses, at least `seconds` long."""
    rng = np.random.default_rng(seed)
    parts, order, spans, t = [], [], [], 0
    while t < seconds * SR:
        k = int(rng.integers(len(sentences)))
        pause = np.zeros(int(rng.uniform(0.5, 1.0) * SR), np.float32)
        parts += [pause, sentences[k][1]]
        spans.append(((t + len(pause)) / SR, (t + len(pause) + len(sentences[k][1])) / SR))
        order.append(k)
        t += len(pause) + len(sentences[k][1])
    parts.append(np.zeros(int(0.7 * SR), np.float32))
    return np.concatenate(parts), order, spans


@pytest.fixture(scope="module")
def recording(espeak):
    """(sentences [(text, audio)], the recording (T,), its sentence order, [(start_s, end_s)] of each sentence's
    audio in it): at least 3 minutes, the five sentences in a seeded order, 0.5-1.0 s pauses between them."""
    sentences = _sentences()
    return sentences, *_join(sentences, 180, seed=0)


def _speech_extent(spans, audio_of) -> list[tuple[float, float]]:
    """Each sentence span narrowed to where its samples are audible (espeak leaves some silence at both ends)."""
    out = []
    for (start, _), audio in zip(spans, audio_of):
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        out.append((start + loud[0] / SR, start + loud[-1] / SR))
    return out


def test_cuts_land_in_pauses_and_chunks_fit(recording):
    sentences, audio, order, spans = recording
    chunks = plan_chunks(audio, max_s=30, overlap_s=1.0)
    assert len(audio) / SR >= 180 and 6 <= len(chunks) <= 10  # near 30 s each, not many tiny ones
    assert [c.cut for c in chunks] == ["silence"] * (len(chunks) - 1) + ["end"]
    assert chunks[0].start_s == 0 and chunks[-1].end_s == pytest.approx(len(audio) / SR)
    for left, right in zip(chunks, chunks[1:]):
        assert left.end_s == right.start_s  # silence cuts: no gap, no overlap
    assert all(c.duration_s <= 30 for c in chunks) and min(c.duration_s for c in chunks[:-1]) >= 15
    speech = _speech_extent(spans, [sentences[k][1] for k in order])
    for c in chunks[:-1]:
        inside = [(a, b) for a, b in speech if a < c.end_s < b]
        assert not inside, f"cut at {c.end_s:.2f} s falls inside the speech {inside}"


def test_a_short_clip_is_one_whole_chunk_without_running_the_vad():
    class NoVad:
        def __call__(self, *args):
            raise AssertionError("the VAD ran on a short clip")

        def reset_states(self):
            raise AssertionError("the VAD ran on a short clip")

    clip = tone(29.9)
    assert plan_chunks(clip, max_s=30, vad_model=NoVad()) == [Chunk(0.0, len(clip) / SR, "whole")]


def test_no_silence_cuts_at_the_cap_with_overlap():
    audio = tone(100.0)
    chunks = plan_chunks(audio, max_s=20, hard_cap_s=25, overlap_s=1.5, segments=[(0.0, 100.0)])
    assert [(c.start_s, c.end_s, c.cut) for c in chunks] == [
        (0.0, 25.0, "cap"), (23.5, 48.5, "cap"), (47.0, 72.0, "cap"), (70.5, 95.5, "cap"), (94.0, 100.0, "end")]


def test_a_silence_beyond_max_s_is_used_before_the_cap():
    audio = tone(60.0)
    # Speech everywhere but a pause at 22-23 s: past max_s (20), within the hard cap (25).
    chunks = plan_chunks(audio, max_s=20, hard_cap_s=25, segments=[(0.0, 22.0), (23.0, 60.0)])
    assert chunks[0] == Chunk(0.0, 22.5, "silence")
    assert all(c.duration_s <= 25 for c in chunks)


def test_plan_rejects_bad_lengths():
    with pytest.raises(ConfigError, match="max_s"):
        plan_chunks(tone(50.0), max_s=30, hard_cap_s=20)
    with pytest.raises(ConfigError, match="overlap_s"):
        plan_chunks(tone(50.0), max_s=30, overlap_s=15)


@pytest.mark.parametrize(("left", "right", "max_words", "expected"), [
    ("הילד הולך לבית הספר", "לבית הספר ואז הביתה", 4, 2),   # two repeated words
    ("הילד הולך לבית הספר,", "הספר ואז", 4, 1),             # punctuation does not matter
    ("אחת שתיים שלוש ארבע חמש", "שתיים שלוש ארבע חמש שש", 3, 0),  # the repeat is longer than the overlap holds
    ("שלום עולם", "עולם", 4, 1),
    ("שלום עולם", "שלום עולם", 4, 2),
    ("שלום", "עולם", 4, 0),
    ("", "עולם", 4, 0),
])
def test_seam_overlap(left, right, max_words, expected):
    assert seam_overlap(left, right, max_words) == expected


def test_join_drops_seam_repeats_only_after_cap_cuts():
    chunks = [Chunk(0, 30, "cap"), Chunk(29, 50, "silence"), Chunk(50, 70, "end")]
    texts = ["אני הולך הביתה עכשיו", "עכשיו מהר מאוד", "מאוד מאוד טוב"]
    # 1 s of overlap holds up to 4 words: "עכשיו" dropped once; the silence seam keeps its repeat.
    assert join_chunks(texts, chunks, overlap_s=1.0) == "אני הולך הביתה עכשיו מהר מאוד מאוד מאוד טוב"


@pytest.mark.parametrize(("text", "loop"), [
    ("תודה תודה תודה תודה", True),
    ("אני לא יודע אני לא יודע אני לא יודע אני לא יודע", True),
    ("הוא אמר " + "ש" * 3 + " " + "מה קרה " * 6, True),
    ("הילד הולך לבית הספר ואחר כך הולך הביתה", False),
    ("כן כן כן", False),  # three times: emphasis, not a loop
    ("של הבית של הגן של הילד של המורה והשאר הם מילים רבות אחרות בלי חזרה בכלל עוד ועוד", False),
    ("", False),
])
def test_is_loop(text, loop):
    assert is_loop(text) is loop


def test_chunk_limits_refuse_a_cap_whisper_cannot_take():
    with pytest.raises(ConfigError, match="max_chunk_seconds: 40 s is longer than the whisper family takes"):
        chunk_limits(get_family("whisper"), EvalConfig(chunk_seconds=30, max_chunk_seconds=40))
    assert chunk_limits(get_family("qwen3_asr"), EvalConfig(chunk_seconds=30, max_chunk_seconds=40)) == (30, 40)


def test_eval_config_checks_chunk_lengths():
    with pytest.raises(ValueError, match="must not exceed max_chunk_seconds"):
        EvalConfig(chunk_seconds=40, max_chunk_seconds=30)
    with pytest.raises(ValueError, match="under half of chunk_seconds"):
        EvalConfig(chunk_overlap_seconds=15)


class OracleFamily:
    """A stand-in family whose `decode` reads each chunk's position in its recording and "hears" the words of every
    sentence whose middle lies in it: the bookkeeping (plans, batches, order, joins) checked without a model."""

    max_audio_seconds = None
    name = "oracle"

    def __init__(self, recordings: list[tuple[np.ndarray, list[str], list[tuple[float, float]]]]):
        self.recordings = recordings
        self.batches: list[list[tuple[int, float]]] = []  # (recording, seconds) of each clip of each decode call

    def decode(self, model, processor, audio, *, max_new_tokens, batch_size, num_beams, language,
               no_repeat_ngram_size, repetition_penalty):
        out, batch = [], []
        for view in audio:
            for index, (base, texts, spans) in enumerate(self.recordings):
                if np.shares_memory(view, base):
                    batch.append((index, len(view) / SR))
                    start = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) / 4 / SR
                    end = start + len(view) / SR
                    out.append(" ".join(t for t, (a, b) in zip(texts, spans) if start <= (a + b) / 2 < end))
        self.batches.append(batch)
        return out


def test_decode_long_batches_chunks_across_recordings_and_joins_in_order(recording):
    sentences, audio, order, spans = recording
    texts = [sentences[k][0] for k in order]
    second = audio[: int(70 * SR)].copy()  # another, shorter recording
    n2 = sum(1 for _, b in spans if b <= 70)
    short = tone(5.0)
    family = OracleFamily([(audio, texts, spans), (second, texts[:n2], spans[:n2]), (short, [], [])])
    config = EvalConfig(batch_size=4)
    results = decode_long(family, None, None, [audio, second, short], config=config)
    assert results[0].text == " ".join(texts)
    assert results[1].text == " ".join(texts[:n2])
    assert results[2].chunks == [{"start_s": 0.0, "end_s": 5.0, "cut": "whole", "text": ""}]
    assert results[0].chunked and results[1].chunked and not results[2].chunked
    # Memory: one batch of at most batch_size chunks of at most 30 s reaches the model at a time; batches are
    # sorted by length and mix recordings.
    sizes = [len(b) for b in family.batches]
    assert max(sizes) == 4 and sum(sizes) == sum(len(r.chunks) for r in results)
    assert all(s <= 30 for b in family.batches for _, s in b)
    flat = [s for b in family.batches for _, s in b]
    assert all(b >= a - 1e-3 for a, b in zip(flat, flat[1:]))
    assert any(len({index for index, _ in b}) > 1 for b in family.batches)


def test_the_audits_asr_scorer_decodes_a_long_sample_in_chunks(recording, monkeypatch):
    from caspi.audit.scorers import AsrScorer, AuditSample
    from caspi.config import AsrScorerConfig

    sentences, audio, order, spans = recording
    family = get_family("qwen3_asr")
    model, processor = family.tiny([t for t, _ in sentences], seed=0, size="xs")
    calls: list[list[int]] = []
    real_decode = type(family).decode

    def spy(self, model, processor, clips, **kwargs):
        calls.append([len(c) for c in clips])
        return real_decode(self, model, processor, clips, **kwargs)

    monkeypatch.setattr(type(family), "decode", spy)
    scorer = AsrScorer(AsrScorerConfig(enabled=True, max_new_tokens=2, batch_size=8), model=(model, processor, family))
    long = AuditSample("long", "d1", "שלום", len(audio) / SR, audio=audio)
    short = AuditSample("short", "d1", "שלום", 1.0, audio=np.zeros(SR, np.float32))
    with torch_threads(1):
        measures = scorer.measure([long, short])
    assert len(measures) == 2 and all(isinstance(m["hypothesis"], str) for m in measures)
    sizes = [n for batch in calls for n in batch]
    assert len(sizes) >= 7 and max(sizes) <= 30 * SR and max(len(b) for b in calls) <= 8  # 3 min in ≤ 30 s chunks
    calls.clear()
    scorer.measure([short, short])
    assert calls == [[SR, SR]]  # short clips only: one batch, as before


# --- end to end: `caspi eval` on a several-minute recording, a tiny model trained here ----------------------------

CHUNKING = EvalConfig(chunk_seconds=4.2, max_chunk_seconds=4.2, chunk_overlap_seconds=0.5, batch_size=8,
                      max_new_tokens=60)


def _train_tiny(sentences, steps: int = 500):
    """A tiny Qwen3-ASR (character tokenizer, "he" audio init) trained full-batch on the five sentences, each padded
    with 0.1-0.8 s of silence per side (a chunk of a recording starts and ends mid-pause), until it reads back every
    chunk of a 2-minute validation recording (another order and other pauses than the tested one). Measured: the
    clips alone are read back after ~50 steps, chunks of a recording only much later; stopped at the first exact
    read of a 40 s validation recording (175 steps) it misread 1 of the tested recording's 61 chunks, and so it did
    at the second exact read in a row (200 steps); at the first exact read of the 2-minute one (300 steps, 29 s with
    the test on one thread) it read all 61 exactly. Returns (model, processor)."""
    family = get_family("qwen3_asr")
    texts = [t for t, _ in sentences]
    model, processor = family.tiny(texts, seed=0, size="xs", audio_init="he")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    validation, val_order, _ = _join(sentences, 120, seed=7)

    def padded(audio):
        return np.concatenate([np.zeros(int(rng.uniform(0.1, 0.8) * SR), np.float32), audio,
                               np.zeros(int(rng.uniform(0.1, 0.8) * SR), np.float32)])

    for step in range(steps):
        batch = family.build_inputs(processor, [padded(a) for _, a in sentences], texts, padding_side="left")
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24:
            read = decode_long(family, model, processor, [validation], config=CHUNKING)[0]
            if read.text == " ".join(texts[k] for k in val_order):
                return model, processor
            model.train()
    raise AssertionError(f"the tiny model did not learn its five sentences in {steps} steps")


@pytest.mark.espeak
def test_caspi_eval_decodes_a_several_minute_recording_in_order(recording, tmp_path, monkeypatch):
    sentences, audio, order, spans = recording
    with torch_threads(1):
        model, processor = _train_tiny(sentences)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    write_flac(tmp_path / "long.flac", audio)
    reference = " ".join(sentences[k][0] for k in order)
    manifest = write_manifest(CutSet.from_cuts([make_cut("long-000", tmp_path / "long.flac", len(audio), reference,
                                                         domain="d1")]), tmp_path / "eval.jsonl.gz")
    # Chunks of at most 4.2 s: one sentence (2-3 s) with its pauses fits, two never do, so each chunk is a sentence
    # the model knows; a chunk of several sentences would be out of what it learned.
    (tmp_path / "recipe.yaml").write_text(
        "name: long\neval:\n  chunk_seconds: 4.2\n  max_chunk_seconds: 4.2\n  chunk_overlap_seconds: 0.5\n"
        "  batch_size: 8\n  max_new_tokens: 60\n", encoding="utf-8")
    family_type = type(get_family("qwen3_asr"))
    seen: list[list[float]] = []
    real_decode = family_type.decode

    def spy(self, model, processor, clips, **kwargs):
        seen.append([len(c) / SR for c in clips])
        return real_decode(self, model, processor, clips, **kwargs)

    monkeypatch.setattr(family_type, "decode", spy)
    with torch_threads(1):
        assert main(["eval", "--model", str(tmp_path / "model"), "--manifest", str(manifest), "--out",
                     str(tmp_path / "out"), "--recipe", str(tmp_path / "recipe.yaml"), "--quiet"]) == 0
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text(encoding="utf-8"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    chunks = record["chunks"]
    assert len(chunks) == len(order)  # one chunk per sentence
    assert summary["decoding"]["chunked_utterances"] == 1 and summary["decoding"]["chunks"] == len(order)
    assert record["loop"] is False and summary["loops"] == 0 and summary["domains"]["d1"]["loops"] == 0
    # Every chunk holds exactly its sentence: the chunk covers the sentence's audio, and the cuts lie in pauses.
    for (start, end, cut), (a, b) in zip(chunks, spans):
        assert start <= a and b <= end and cut in ("silence", "end")
    # Order and word counts at every seam: the joined text is the sentences in the recording's order. The model
    # is tiny and trained for seconds, so a chunk may come out with a wrong letter; each chunk's text must still
    # be nearest (in characters) to its own sentence, and the joined text nearly exact.
    hyp_words, ref_words = record["hypothesis"].split(), reference.split()
    assert abs(len(hyp_words) - len(ref_words)) <= 2
    read = decode_long(get_family("qwen3_asr"), model, processor, [audio], config=CHUNKING)[0]
    assert read.text == record["hypothesis"]  # the CLI's text is the chunks' texts joined
    texts = [t for t, _ in sentences]
    nearest = [min(range(len(texts)), key=lambda j: jiwer.cer(texts[j], c["text"] or "-")) for c in read.chunks]
    assert nearest == order
    right_counts = sum(len(c["text"].split()) == len(texts[k].split()) for c, k in zip(read.chunks, order))
    assert right_counts >= 0.9 * len(order)
    assert (record["word_substitutions"] + record["word_deletions"] + record["word_insertions"]) <= 0.1 * len(ref_words)
    # Memory stays flat with length: the model never saw more than a batch of 8 chunks of at most 4.2 s.
    assert seen and max(len(b) for b in seen) <= 8 and max(s for b in seen for s in b) <= 4.2 + 1e-6
