"""WER and CER from jiwer, after one of the Hebrew normalisers of `caspi.data.text` (the only implementation).

Counts, not just rates, so per-domain and overall figures can be summed exactly:

    s = score(refs, hyps, normaliser="scoring")
    s.wer, s.cer, s.word_errors, s.ref_words
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer

from caspi.data.text import NORMALISERS
from caspi.errors import ConfigError, DataError


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


def _errors(output) -> int:
    return output.substitutions + output.deletions + output.insertions


def score(refs: Sequence[str], hyps: Sequence[str], normaliser: str = "scoring") -> Score:
    """Corpus WER/CER of hypotheses against references after normalisation (`scoring` or `leaderboard`).

    jiwer rejects empty references (and `wer()` of an all-empty set is an insertion count, not a rate:
    REFERENCE.md), so empty normalised references are scored here as insertions of every hypothesis word/char.
    """
    if normaliser not in NORMALISERS:
        raise ConfigError(f"unknown normaliser {normaliser!r}; known: {', '.join(NORMALISERS)}")
    if len(refs) != len(hyps):
        raise DataError(f"score: {len(refs)} references but {len(hyps)} hypotheses")
    norm = NORMALISERS[normaliser]
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps)]
    scored = [(r, h) for r, h in pairs if r]
    empty = [(r, h) for r, h in pairs if not r]
    word_errors = char_errors = ref_words = ref_chars = 0
    if scored:
        r, h = [p[0] for p in scored], [p[1] for p in scored]
        words = jiwer.process_words(r, h)
        chars = jiwer.process_characters(r, h)
        word_errors, char_errors = _errors(words), _errors(chars)
        # Reference lengths as jiwer counts them (characters include the spaces between words).
        ref_words = words.hits + words.substitutions + words.deletions
        ref_chars = chars.hits + chars.substitutions + chars.deletions
    for _, h in empty:
        word_errors += len(h.split())
        char_errors += len(h)  # what jiwer's character transform would count, spaces included
    return Score(len(pairs), word_errors, ref_words, char_errors, ref_chars, len(empty))
