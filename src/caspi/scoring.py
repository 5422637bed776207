"""WER and CER: per-utterance error counts from jiwer's alignment after one of the Hebrew normalisers of
`caspi.data.text` (the only implementation), and their corpus sums. Training evals, the audit's ASR scorer, `caspi
eval` and the bootstrap statistics of `caspi.eval.bootstrap` all count errors here, so every figure Caspi prints is
aligned and normalised the same way.

    s = score(refs, hyps, normaliser="scoring")              # Score: corpus sums
    s.wer, s.cer, s.word_errors, s.ref_words
    counts = utterance_counts(refs, hyps, "scoring")         # UtteranceCounts: arrays of length n

Counts, not just rates, so per-domain and overall figures can be summed exactly, and a bootstrap resample is a
weighted sum rather than a re-alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer
import numpy as np

from caspi.data.text import NORMALISERS
from caspi.errors import ConfigError, DataError


@dataclass
class UtteranceCounts:
    """Per-utterance counts (arrays of length n), after normalisation."""

    word_sub: np.ndarray
    word_del: np.ndarray
    word_ins: np.ndarray
    ref_words: np.ndarray
    char_sub: np.ndarray
    char_del: np.ndarray
    char_ins: np.ndarray
    ref_chars: np.ndarray

    @property
    def word_errors(self) -> np.ndarray:
        return self.word_sub + self.word_del + self.word_ins

    @property
    def char_errors(self) -> np.ndarray:
        return self.char_sub + self.char_del + self.char_ins


def _per_utterance(output, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(substitutions, deletions, insertions, reference length) per utterance from a jiwer output's alignments."""
    sub, dele, ins, ref = (np.zeros(n, dtype=np.int64) for _ in range(4))
    for i, chunks in enumerate(output.alignments):
        for c in chunks:
            span = c.ref_end_idx - c.ref_start_idx
            if c.type == "substitute":
                sub[i] += span
            elif c.type == "delete":
                dele[i] += span
            elif c.type == "insert":
                ins[i] += c.hyp_end_idx - c.hyp_start_idx
            if c.type != "insert":
                ref[i] += span
    return sub, dele, ins, ref


def utterance_counts(refs: Sequence[str], hyps: Sequence[str], normaliser: str = "scoring") -> UtteranceCounts:
    """Word and character errors of each (reference, hypothesis) pair after normalisation, with jiwer's alignment.

    A reference that normalises to nothing has length 0 and counts every hypothesis word/character as an
    insertion. Handled here rather than by jiwer, whose treatment of empty references has changed between
    versions (REFERENCE.md "Evaluation conventions")."""
    if normaliser not in NORMALISERS:
        raise ConfigError(f"unknown normaliser {normaliser!r}; known: {', '.join(NORMALISERS)}")
    if len(refs) != len(hyps):
        raise DataError(f"{len(refs)} references but {len(hyps)} hypotheses")
    norm = NORMALISERS[normaliser]
    r = [norm(x) for x in refs]
    h = [norm(x) for x in hyps]
    n = len(r)
    words = [np.zeros(n, dtype=np.int64) for _ in range(4)]
    chars = [np.zeros(n, dtype=np.int64) for _ in range(4)]
    scored = [i for i in range(n) if r[i]]
    if scored:
        w = _per_utterance(jiwer.process_words([r[i] for i in scored], [h[i] for i in scored]), len(scored))
        c = _per_utterance(jiwer.process_characters([r[i] for i in scored], [h[i] for i in scored]), len(scored))
        for target, source in ((words, w), (chars, c)):
            for k in range(4):
                target[k][scored] = source[k]
    for i in range(n):
        if not r[i]:
            words[2][i] = len(h[i].split())
            chars[2][i] = len(h[i])
    return UtteranceCounts(*words, *chars)


def rate(errors: np.ndarray, refs: np.ndarray) -> float:
    total = float(np.sum(refs))
    return float(np.sum(errors)) / total if total > 0 else float("nan")


@dataclass(frozen=True)
class Score:
    utterances: int
    word_errors: int  # substitutions + deletions + insertions
    ref_words: int
    char_errors: int
    ref_chars: int
    empty_refs: int  # references that normalise to nothing (their hypothesis words count as insertions)

    @property
    def wer(self) -> float:
        return self.word_errors / self.ref_words if self.ref_words else float("nan")

    @property
    def cer(self) -> float:
        return self.char_errors / self.ref_chars if self.ref_chars else float("nan")

    def to_dict(self) -> dict:
        return dict(asdict(self), wer=self.wer, cer=self.cer)


def score(refs: Sequence[str], hyps: Sequence[str], normaliser: str = "scoring") -> Score:
    """Corpus WER/CER of hypotheses against references after normalisation (`scoring` or `leaderboard`): the sums
    of `utterance_counts` (one alignment code path for training evals, the audit and `caspi eval`).
    References that normalise to nothing count every hypothesis word/character as an insertion."""
    counts = utterance_counts(refs, hyps, normaliser)
    return Score(
        utterances=len(refs),
        word_errors=int(counts.word_errors.sum()),
        ref_words=int(counts.ref_words.sum()),
        char_errors=int(counts.char_errors.sum()),
        ref_chars=int(counts.ref_chars.sum()),
        empty_refs=int((counts.ref_chars == 0).sum()),  # a reference that normalises to nothing has no characters
    )
