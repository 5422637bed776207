"""WER and CER from jiwer, after one of the Hebrew normalisers of `caspi.data.text` (the only implementation).

Counts, not just rates, so per-domain and overall figures can be summed exactly:

    s = score(refs, hyps, normaliser="scoring")
    s.wer, s.cer, s.word_errors, s.ref_words
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from caspi.eval.stats import utterance_counts


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
    of `caspi.eval.stats.utterance_counts` (one alignment code path for training evals, the audit and `caspi eval`).
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
