"""Long recordings: cut at silences, decode the chunks in batches across recordings, join them in order.

    plans   = plan_chunks(audio, max_s=30, hard_cap_s=30, overlap_s=1.0, probs=p)   # [Chunk(start_s, end_s, cut)]
    results = decode_long(family, model, processor, clips, config=recipe.eval)      # [LongResult(text, chunks, loop)]
    is_loop("תודה תודה תודה תודה")                                                   # True

A clip no longer than `chunk_seconds` is one chunk (`cut="whole"`), planned without running the VAD and decoded
exactly as `family.decode` decodes it alone, so short-clip evals keep their numbers. A longer recording is cut where
silero-vad (`caspi.data.vad`) finds silence:

- From the current chunk start, the cut goes into a silence in the second half of the next `max_s` seconds: the
  latest one at least half as long as the longest there (a pause, not a breath), at the silence's middle clipped
  to that window, so chunks stay near `max_s`, never tiny. With no
  silence there, into the first silence after `max_s` up to `hard_cap_s`; then into the longest silence of the
  first half (a short chunk, but one cut in silence).
- With no silence within `hard_cap_s` (music, continuous speech), the chunk ends at the cap (`cut="cap"`) and the
  next one starts `overlap_s` earlier, so a word cut in two at the cap is heard whole by one side.

A chunk's `cut` says how its end was made: "silence", "cap" (the next chunk overlaps it), "end" (the recording's
last chunk) or "whole" (the recording's only chunk, not cut).

Seams: at a "silence" cut both sides are simply joined. At a "cap" cut the overlap is heard twice, so the right
chunk's hypothesis may repeat the end of the left one: `seam_overlap` finds the longest word sequence that ends the
left hypothesis and starts the right one (compared after `for_scoring`, so punctuation and niqqud do not matter), at
most the words the overlap can hold (`MAX_WORDS_PER_S` × overlap, rounded up), and the right side's copy is dropped.
A word the cap cuts in two may come out as two fragments that match nothing: they are kept (an insertion, not a
lost word).

Memory: the audio is O(length), as is the VAD's per-window probability array (one float32 per 32 ms); the model
sees one batch of at most `batch_size` chunks of at most `max_chunk_seconds` at a time, whatever the recordings'
length (chunks are numpy views of the clips, features are made per batch inside `family.decode`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from caspi.config import EvalConfig
from caspi.data.text import for_scoring
from caspi.data.audio import SAMPLE_RATE
from caspi.data.vad import as_mono, speech_probabilities, speech_segments
from caspi.errors import ConfigError
from caspi.models.families import ModelFamily

# Upper bound on words per second of speech, for how many words an overlap can hold: read Hebrew runs ~2-3 words/s,
# fast conversational speech ~4; 4 keeps a seam from eating more words than the overlap could have repeated.
MAX_WORDS_PER_S = 4.0


@dataclass(frozen=True)
class Chunk:
    start_s: float  # seconds from the recording's start
    end_s: float
    cut: str  # how the chunk ends: "whole", "silence", "cap" (the next chunk overlaps it) or "end"

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class LongResult:
    text: str  # the chunks' texts joined in order, seam repeats dropped
    chunks: list[dict] = field(default_factory=list)  # per chunk: start_s, end_s, cut, text (as decoded)
    loop: bool = False  # some chunk's hypothesis is a loop (`is_loop`)

    @property
    def chunked(self) -> bool:
        return len(self.chunks) > 1


def chunk_limits(family: ModelFamily, config: EvalConfig) -> tuple[float, float]:
    """(chunk_seconds, max_chunk_seconds) of `config`, checked against the family's window (Whisper: 30 s)."""
    problem = config.chunk_cap_problem(family.name, family.max_audio_seconds)
    if problem:
        raise ConfigError(problem)
    return config.chunk_seconds, config.max_chunk_seconds


def _silences(segments: Sequence[tuple[float, float]], duration_s: float) -> list[tuple[float, float]]:
    """The gaps [(start_s, end_s)] between speech segments, the leading and trailing ones included."""
    gaps, prev = [], 0.0
    for start, end in segments:
        if start > prev:
            gaps.append((prev, start))
        prev = max(prev, end)
    if duration_s > prev:
        gaps.append((prev, duration_s))
    return gaps


def _cut_in(gaps, lo: float, hi: float, pick: str) -> float | None:
    """A cut point in a gap's part that lies in (lo, hi]: the gap's middle, clipped to that part (farthest from the
    speech on both sides that the window allows); None when no gap reaches into the window. `pick="longest"`: the
    latest part at least half as long as the longest one (a clear pause rather than a breath, and the chunk as long
    as such a pause allows); `pick="first"`: the earliest."""
    parts = [(max(a, lo), min(b, hi), (a + b) / 2) for a, b in gaps if b > lo and a < hi]
    parts = [p for p in parts if p[1] > p[0]]
    if not parts:
        return None
    if pick == "longest":
        longest = max(b - a for a, b, _ in parts)
        a, b, middle = [p for p in parts if p[1] - p[0] >= longest / 2][-1]
    else:
        a, b, middle = parts[0]
    return min(max(middle, a), b)


def plan_chunks(audio: np.ndarray, *, max_s: float, hard_cap_s: float | None = None, overlap_s: float = 1.0,
                probs: np.ndarray | None = None, segments: Sequence[tuple[float, float]] | None = None,
                vad_model=None) -> list[Chunk]:
    """Chunks of a 16 kHz recording `audio` (T,), each at most `hard_cap_s` (default `max_s`) long, preferably at
    most `max_s`, cut in silences (see the module docstring). Silences come from `segments` (speech [(start_s,
    end_s)]), else from silero's per-window `probs` (`caspi.data.vad.speech_probabilities`), else silero is run here;
    none of this happens for a recording of at most `max_s`: one "whole" chunk."""
    hard_cap_s = max_s if hard_cap_s is None else hard_cap_s
    if not 0 < max_s <= hard_cap_s:
        raise ConfigError(f"plan_chunks: need 0 < max_s ({max_s}) <= hard_cap_s ({hard_cap_s})")
    if not 0 <= overlap_s < max_s / 2:
        raise ConfigError(f"plan_chunks: overlap_s ({overlap_s}) must lie in [0, max_s / 2)")
    audio = as_mono(audio, 0)
    duration = len(audio) / SAMPLE_RATE  # seconds
    if duration <= max_s:
        return [Chunk(0.0, duration, "whole")]
    if segments is None:
        if probs is None:
            probs = speech_probabilities([audio], model=vad_model)[0]
        segments = speech_segments(probs, num_samples=len(audio))
    gaps = _silences(segments, duration)
    chunks: list[Chunk] = []
    start = 0.0
    while duration - start > max_s:
        ahead = [(a, b) for a, b in gaps if a > start]  # not the silence this chunk starts in
        cut = _cut_in(gaps, start + max_s / 2, start + max_s, "longest")
        if cut is None:
            cut = _cut_in(gaps, start + max_s, start + hard_cap_s, "first")
        if cut is None:
            cut = _cut_in(ahead, start, start + max_s / 2, "longest")
        if cut is not None:
            chunks.append(Chunk(start, cut, "silence"))
            start = cut
        else:
            cut = start + hard_cap_s
            if cut >= duration:
                break  # the rest fits under the hard cap
            chunks.append(Chunk(start, cut, "cap"))
            start = cut - overlap_s
    chunks.append(Chunk(start, duration, "end"))
    return chunks


def _words(text: str) -> list[str]:
    return text.split()


def seam_overlap(left: str, right: str, max_words: int) -> int:
    """How many words at the start of `right` repeat the end of `left`: the longest k ≤ `max_words` with the last k
    words of `left` equal to the first k of `right` (each word compared after `for_scoring`); 0 when none."""
    lw = [for_scoring(w) for w in _words(left)]
    rw = [for_scoring(w) for w in _words(right)]
    for k in range(min(max_words, len(lw), len(rw)), 0, -1):
        if lw[-k:] == rw[:k]:
            return k
    return 0


def join_chunks(texts: Sequence[str], chunks: Sequence[Chunk], overlap_s: float) -> str:
    """The chunks' hypotheses joined with spaces in order; after a "cap" chunk, the next text loses the words that
    repeat the end of the joined text so far (`seam_overlap`, at most ceil(`MAX_WORDS_PER_S` × `overlap_s`))."""
    max_words = math.ceil(MAX_WORDS_PER_S * overlap_s)
    words: list[str] = []
    for i, text in enumerate(texts):
        new = _words(text)
        if i > 0 and chunks[i - 1].cut == "cap" and max_words:
            new = new[seam_overlap(" ".join(words), text, max_words):]
        words += new
    return " ".join(words)


def is_loop(text: str, max_ngram: int = 4, min_repeats: int = 4, min_share: float = 0.5) -> bool:
    """True when one n-gram of 1..`max_ngram` words occurs at least `min_repeats` times in `text` and its
    occurrences cover at least `min_share` of the words (counted with overlaps; words compared after
    `for_scoring`). Defaults and why: `EvalConfig.loop_*`."""
    words = [w for w in (for_scoring(w) for w in _words(text)) if w]
    for n in range(1, max_ngram + 1):
        if len(words) < n * min_repeats:
            break
        _, count = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1)).most_common(1)[0]
        if count >= min_repeats and count * n >= min_share * len(words):
            return True
    return False


def decode_long(family: ModelFamily, model, processor, clips: Sequence[np.ndarray], *, config: EvalConfig,
                language: str | None = None, progress: Callable[[int], None] | None = None,
                vad_model=None) -> list[LongResult]:
    """Per clip (16 kHz mono (T,)), its transcript from chunks (`plan_chunks` with `config`'s chunk lengths).

    Every chunk of every clip goes into one list, sorted by length and decoded `config.batch_size` at a time with
    `family.decode` (greedy or `num_beams`, the repetition guard, `max_new_tokens` per chunk), so a batch mixes
    recordings and little of it is padding. The VAD runs once, batched, over the clips longer than `chunk_seconds`.
    `progress(n)` is called after each batch with the number of chunks it decoded."""
    max_s, cap = chunk_limits(family, config)
    audio = [as_mono(c, i) for i, c in enumerate(clips)]
    long = [i for i, x in enumerate(audio) if len(x) > max_s * SAMPLE_RATE]
    probs = dict(zip(long, speech_probabilities([audio[i] for i in long], model=vad_model))) if long else {}
    plans = [plan_chunks(x, max_s=max_s, hard_cap_s=cap, overlap_s=config.chunk_overlap_seconds, probs=probs.get(i))
             for i, x in enumerate(audio)]
    items = [(i, k) for i, plan in enumerate(plans) for k in range(len(plan))]
    items.sort(key=lambda ik: plans[ik[0]][ik[1]].duration_s)  # stable: equal lengths keep recording order
    texts: list[list[str]] = [[""] * len(plan) for plan in plans]
    for first in range(0, len(items), config.batch_size):
        batch = items[first:first + config.batch_size]
        views = [_slice(audio[i], plans[i][k]) for i, k in batch]  # numpy views, no copies
        out = family.decode(model, processor, views, max_new_tokens=config.max_new_tokens, batch_size=len(views),
                            num_beams=config.num_beams, language=language,
                            no_repeat_ngram_size=config.no_repeat_ngram_size,
                            repetition_penalty=config.repetition_penalty)
        for (i, k), text in zip(batch, out):
            texts[i][k] = text
        if progress is not None:
            progress(len(batch))
    loop_options = dict(max_ngram=config.loop_max_ngram, min_repeats=config.loop_min_repeats,
                        min_share=config.loop_min_share)
    results = []
    for plan, chunk_texts in zip(plans, texts):
        text = chunk_texts[0] if len(plan) == 1 else join_chunks(chunk_texts, plan, config.chunk_overlap_seconds)
        chunks = [{"start_s": c.start_s, "end_s": c.end_s, "cut": c.cut, "text": t} for c, t in zip(plan, chunk_texts)]
        results.append(LongResult(text, chunks, any(is_loop(t, **loop_options) for t in chunk_texts)))
    return results


def _slice(audio: np.ndarray, chunk: Chunk) -> np.ndarray:
    """The chunk's samples of `audio`: a view, the whole array for a "whole" chunk."""
    if chunk.cut == "whole":
        return audio
    return audio[round(chunk.start_s * SAMPLE_RATE):round(chunk.end_s * SAMPLE_RATE)]
