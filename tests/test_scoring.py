"""`caspi.scoring`: per-utterance counts against jiwer pair by pair, and `score`, the corpus WER/CER the training loop,
the audit and `caspi eval` report."""

import math

import jiwer
import numpy as np
import pytest

from caspi.data.text import NORMALISERS, for_scoring
from caspi.errors import ConfigError, DataError
from caspi.scoring import rate, score, utterance_counts

# (reference, hypothesis) as a model would meet them: niqqud and punctuation in the reference only.
PAIRS = [
    ("שָׁלוֹם עוֹלָם", "שלום עולם"),  # niqqud only: no error after normalisation
    ("הַיּוֹם, בַּבֹּקֶר, יָרַד גֶּשֶׁם!", "היום בבוקר ירד גשם"),  # defective vs plene spelling: 1 substitution
    ("צה״ל הודיע על תרגיל.", "צהל הודיע תרגיל גדול"),  # gershayim (leaderboard splits it), deletion + insertion
    ("שלום", "שלום לכולם חברים"),  # insertions only
    ("אני הולך הביתה עכשיו", "אני הולך"),  # deletions only
    ("?!", "מה קורה"),  # reference normalises to nothing: every hypothesis word is an insertion
    ("בוקר טוב", ""),  # empty hypothesis
    ("...", ""),  # both empty: no error, no length
    ('המחיר 3.5 ש"ח', "המחיר שלוש וחצי שקל"),  # decimal point (kept by scoring, split by leaderboard)
]
REFS = [r for r, _ in PAIRS]
HYPS = [h for _, h in PAIRS]



# --- utterance_counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normaliser", ["scoring", "leaderboard"])
def test_corpus_totals_equal_jiwer(normaliser):
    norm = NORMALISERS[normaliser]
    r, h = [norm(x) for x in REFS], [norm(x) for x in HYPS]
    counts = utterance_counts(REFS, HYPS, normaliser)

    words = jiwer.process_words(r, h)
    assert counts.word_sub.sum() == words.substitutions
    assert counts.word_del.sum() == words.deletions
    assert counts.word_ins.sum() == words.insertions
    assert counts.ref_words.sum() == words.hits + words.substitutions + words.deletions
    assert rate(counts.word_errors, counts.ref_words) == pytest.approx(jiwer.wer(r, h), rel=1e-12)

    chars = jiwer.process_characters(r, h)
    assert counts.char_sub.sum() == chars.substitutions
    assert counts.char_del.sum() == chars.deletions
    assert counts.char_ins.sum() == chars.insertions
    assert counts.ref_chars.sum() == chars.hits + chars.substitutions + chars.deletions
    assert rate(counts.char_errors, counts.ref_chars) == pytest.approx(jiwer.cer(r, h), rel=1e-12)


@pytest.mark.parametrize("normaliser", ["scoring", "leaderboard"])
def test_per_utterance_counts_equal_jiwer_pair_by_pair(normaliser):
    norm = NORMALISERS[normaliser]
    counts = utterance_counts(REFS, HYPS, normaliser)
    for i, (ref, hyp) in enumerate(PAIRS):
        w = jiwer.process_words(norm(ref), norm(hyp))
        c = jiwer.process_characters(norm(ref), norm(hyp))
        got = (counts.word_sub[i], counts.word_del[i], counts.word_ins[i], counts.ref_words[i],
               counts.char_sub[i], counts.char_del[i], counts.char_ins[i], counts.ref_chars[i])
        want = (w.substitutions, w.deletions, w.insertions, w.hits + w.substitutions + w.deletions,
                c.substitutions, c.deletions, c.insertions, c.hits + c.substitutions + c.deletions)
        assert got == want, f"pair {i}: {ref!r} / {hyp!r}"


def test_hand_counted_pairs():
    c = utterance_counts(REFS, HYPS, "scoring")
    # niqqud only
    assert (c.word_errors[0], c.ref_words[0], c.char_errors[0], c.ref_chars[0]) == (0, 2, 0, 9)
    # "שלום" → "שלום לכולם חברים": 2 inserted words; 12 inserted characters (" לכולם חברים", spaces count)
    assert (c.word_sub[3], c.word_del[3], c.word_ins[3], c.ref_words[3]) == (0, 0, 2, 1)
    assert (c.char_ins[3], c.ref_chars[3]) == (12, 4)
    # deletions only: "הביתה עכשיו" gone
    assert (c.word_sub[4], c.word_del[4], c.word_ins[4], c.ref_words[4]) == (0, 2, 0, 4)
    # "?!" normalises to "": length 0, "מה קורה" = 2 word and 7 character insertions
    assert (c.word_sub[5], c.word_del[5], c.word_ins[5], c.ref_words[5]) == (0, 0, 2, 0)
    assert (c.char_sub[5], c.char_del[5], c.char_ins[5], c.ref_chars[5]) == (0, 0, 7, 0)
    # empty hypothesis: everything deleted
    assert (c.word_del[6], c.ref_words[6], c.char_del[6], c.ref_chars[6]) == (2, 2, 8, 8)
    # both empty: nothing at all
    assert c.word_errors[7] == c.ref_words[7] == c.char_errors[7] == c.ref_chars[7] == 0


def test_a_resample_is_a_weighted_sum_of_counts():
    # The vectorised bootstrap never re-aligns: a resample with replacement is the count vector weighted by how often
    # each utterance was drawn. Check that this equals jiwer re-run on the resampled lists.
    norm = NORMALISERS["scoring"]
    r, h = [norm(x) for x in REFS], [norm(x) for x in HYPS]
    counts = utterance_counts(REFS, HYPS, "scoring")
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(PAIRS), len(PAIRS))
        weights = np.bincount(idx, minlength=len(PAIRS))  # (n,) times each utterance was drawn
        resampled_r, resampled_h = [r[i] for i in idx], [h[i] for i in idx]
        if not any(resampled_r):
            continue  # jiwer's rate of all-empty references is an insertion count, not a rate
        wer = (weights @ counts.word_errors) / (weights @ counts.ref_words)
        cer = (weights @ counts.char_errors) / (weights @ counts.ref_chars)
        assert wer == pytest.approx(jiwer.wer(resampled_r, resampled_h), rel=1e-12)
        assert cer == pytest.approx(jiwer.cer(resampled_r, resampled_h), rel=1e-12)


def test_utterance_counts_rejects_bad_input():
    with pytest.raises(DataError):
        utterance_counts(["א", "ב"], ["א"])
    with pytest.raises(ConfigError):
        utterance_counts(["א"], ["א"], normaliser="nope")


def test_rate_of_nothing_is_nan():
    assert math.isnan(rate(np.array([3]), np.array([0])))



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
