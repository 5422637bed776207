"""`caspi.eval.metrics.score`: the corpus WER/CER the training loop and the audit report."""

import math

import jiwer
import pytest

from caspi.data.text import for_scoring
from caspi.eval.metrics import score


def test_score_equals_jiwer_and_counts_empty_references_as_insertions():
    refs = ["שָׁלוֹם, עוֹלָם!", "הילד הולך לבית הספר", "?!"]
    hyps = ["שלום עולם", "הילד הלך לבית", "מה"]
    s = score(refs, hyps)
    normal = [(for_scoring(r), for_scoring(h)) for r, h in zip(refs[:2], hyps[:2])]
    words = jiwer.process_words([r for r, _ in normal], [h for _, h in normal])
    assert s.ref_words == 6 and s.word_errors == words.substitutions + words.deletions + words.insertions + 1
    assert s.wer == pytest.approx(s.word_errors / 6)
    assert s.empty_refs == 1 and s.utterances == 3
    nothing = score(["?"], ["x"])  # no reference words or characters: NaN rates, not insertion counts
    assert math.isnan(nothing.wer) and math.isnan(nothing.cer)
    assert (nothing.word_errors, nothing.ref_words, nothing.empty_refs) == (1, 0, 1)
