"""Golden input → output pairs for the Hebrew normalisers (STYLE.md habit 9): one pair per rule."""

import pytest

from caspi.data.text import for_leaderboard, for_scoring, for_training

TRAINING = [
    ("שָׁלוֹם, עוֹלָם!", "שלום, עולם!"),  # niqqud removed, punctuation kept
    ("בְּרֵאשִׁ֖ית בָּרָא", "בראשית ברא"),  # cantillation (tipeha U+0596) removed too
    ("\u200fשלום\u200e  עולם", "שלום עולם"),  # bidi marks removed, spaces collapsed
    ("שלום\u00a0\tעולם \n", "שלום עולם"),  # NBSP, tab and newline are whitespace
    ("צה״ל", "צה״ל"),  # gershayim kept for training
    ("בית־ספר", "בית־ספר"),  # maqaf is punctuation, kept
    ("\u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd", "שלום"),  # decomposed order → same letters after NFC + strip
    ("Hello, World", "Hello, World"),  # Latin untouched (case kept for training)
    ("\ufeffטקסט", "טקסט"),  # BOM removed
    ("", ""),
]

SCORING = [
    ("שָׁלוֹם, עוֹלָם!", "שלום עולם"),  # punctuation → space
    ("צה״ל", "צהל"),  # gershayim deleted, not split
    ('צה"ל יצא', "צהל יצא"),  # ASCII double quote used as gershayim
    ("ג'ירפה", "גירפה"),  # ASCII apostrophe used as geresh
    ("ג׳ירפה", "גירפה"),  # Hebrew geresh
    ("סע׳ 3", "סע 3"),  # geresh at a word end
    ('"ציטוט" כאן', "ציטוט כאן"),  # quotation marks (any form) removed
    ("“ציטוט” כאן", "ציטוט כאן"),  # typographic quotes unified with the rest
    ("Hello World, שלום.", "hello world שלום"),  # Latin lower-cased
    ("don't stop", "dont stop"),  # apostrophe inside a Latin word deleted
    ("3.5% מ-1,000 ש״ח", "3.5 מ 1000 שח"),  # decimal point kept, thousands separator dropped, % removed
    ("בית־ספר", "בית ספר"),  # maqaf separates words
    ("מה?!  באמת...", "מה באמת"),
    ("\u200fשלום\u200e", "שלום"),
    ("!!!", ""),
]

LEADERBOARD = [
    # The ivrit.ai leaderboard normaliser, side effects included (REFERENCE.md, "Their WER normaliser").
    ("צה״ל", "צה ל"),  # Unicode gershayim splits the word
    ('צה"ל', "צהל"),  # ASCII quote deleted
    ("3.5%", "3 5"),  # digits stay digits, separators → space
    ("שָׁלוֹם, עוֹלָם!", "שלום עולם"),
    ("בְּרֵאשִׁ֖ית", "בראש ית"),  # cantillation is not niqqud for them: it splits the word
    ("Hello [noise] World (laughs)", "hello world"),  # bracketed spans dropped, lower-cased
    ("\u200fשלום", "שלום"),
]


@pytest.mark.parametrize("raw, expected", TRAINING)
def test_for_training(raw, expected):
    assert for_training(raw) == expected


@pytest.mark.parametrize("raw, expected", SCORING)
def test_for_scoring(raw, expected):
    assert for_scoring(raw) == expected


@pytest.mark.parametrize("raw, expected", LEADERBOARD)
def test_for_leaderboard(raw, expected):
    assert for_leaderboard(raw) == expected


@pytest.mark.parametrize("form", [for_training, for_scoring, for_leaderboard])
@pytest.mark.parametrize("raw", [r for r, _ in TRAINING + SCORING + LEADERBOARD])
def test_idempotent(form, raw):
    once = form(raw)
    assert form(once) == once


def test_real_niqqud_transcripts_lose_every_mark(real_hebrew_manifest):
    import json

    for line in real_hebrew_manifest.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        cleaned = for_training(text)
        assert not any("\u0591" <= c <= "\u05c7" and c not in "\u05be\u05c0\u05c3\u05c6" for c in cleaned), text
        assert len(cleaned.split()) == len(text.split())
