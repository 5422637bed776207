"""Hebrew text normalisation: the one implementation every part of Caspi uses.

Three forms, each a pure function `str -> str`:

- `for_training`: what the model learns to write. NFC, bidi/zero-width controls removed, niqqud and cantillation
  removed, whitespace collapsed; punctuation, geresh and gershayim kept (`צה״ל` stays `צה״ל`).
- `for_scoring`: Caspi's own WER/CER form. `for_training`, then geresh and gershayim (Hebrew ׳ ״ and the ASCII or
  typographic quotes used for them) deleted without splitting the word (`צה״ל` → `צהל`), every other quote and
  punctuation mark → space (a decimal point or thousands separator between digits is kept / dropped so `3.5`
  stays `3.5` and `1,000` becomes `1000`), Latin lower-cased.
- `for_leaderboard`: the ivrit.ai leaderboard's `HebrewTextNormalizer` reproduced exactly (REFERENCE.md: delete
  invisible controls, `hebrew` package's `no_niqqud`, delete ASCII `"` and `'`, then Whisper's
  `BasicTextNormalizer`), so numbers are comparable with their published table. Side effects are theirs:
  `צה״ל` → `צה ל`, `3.5%` → `3 5`, cantillation splits words. Report which form a number used.
"""

from __future__ import annotations

import re
import unicodedata

# Invisible characters that survive copy-paste and silently change a WER: Arabic letter mark, zero-width
# space/non-joiner/joiner, LRM/RLM, bidi embeddings/overrides, isolates, BOM. Same set as the leaderboard's.
_INVISIBLE = "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_INVISIBLE_MAP = {ord(c): None for c in _INVISIBLE}

# Hebrew combining marks: cantillation U+0591–U+05AF, points U+05B0–U+05BD (incl. meteg U+05BD), rafe U+05BF,
# shin/sin dots U+05C1–U+05C2, upper/lower dots U+05C4–U+05C5, qamats qatan U+05C7. Punctuation in the block
# (maqaf U+05BE, paseq U+05C0, sof pasuq U+05C3, nun hafukha U+05C6) is not a mark and is kept.
_HEBREW_MARKS = re.compile("[\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7]")

GERESH = "\u05f3"  # ׳
GERSHAYIM = "\u05f4"  # ״
# Characters writers use in place of geresh/gershayim inside a Hebrew word (ASCII and typographic quotes).
_GERESH_LIKE = "'\u2019\u2018`\u00b4" + GERESH
_GERSHAYIM_LIKE = '"\u201c\u201d\u201e' + GERSHAYIM
_HEBREW_LETTER = "\u05d0-\u05ea"
# A geresh/gershayim sign directly after a Hebrew letter (צה״ל, ג'ירפה, ש"ח, סע' at a word end) is part of the
# word: delete it. Any other quote is a quotation mark: it becomes a space like other punctuation.
_IN_WORD_GERESH = re.compile(f"(?<=[{_HEBREW_LETTER}])[{re.escape(_GERESH_LIKE + _GERSHAYIM_LIKE)}]")
# An apostrophe between two letters of any script (don't, O'Brien) is also part of the word.
_IN_WORD_APOSTROPHE = re.compile(r"(?<=[^\W\d_])['\u2019](?=[^\W\d_])")
# Separators inside numbers: "3.5" keeps its point, "1,000" loses its comma.
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL_PLACEHOLDER = "\uE000"  # private-use character that survives the punctuation pass


def strip_invisible(text: str) -> str:
    """Remove bidi controls and zero-width characters."""
    return text.translate(_INVISIBLE_MAP)


def strip_marks(text: str) -> str:
    """Remove niqqud and cantillation (all Hebrew combining marks), keeping Hebrew punctuation."""
    return _HEBREW_MARKS.sub("", text)


def collapse_spaces(text: str) -> str:
    """Any run of whitespace (incl. NBSP and other Unicode spaces) → one space; trimmed."""
    return " ".join(text.split())


def for_training(text: str) -> str:
    """The training target form: NFC, no invisible controls, no niqqud/cantillation, single spaces."""
    text = unicodedata.normalize("NFC", text)
    return collapse_spaces(strip_marks(strip_invisible(text)))


def _punct_to_space(char: str) -> str:
    # Unicode categories P* (punctuation) and S* (symbols: %, ₪, +) separate words; letters, digits and marks stay.
    return " " if unicodedata.category(char)[0] in "PS" else char


def for_scoring(text: str) -> str:
    """Caspi's scoring form: `for_training`, geresh/gershayim deleted in words, other punctuation → space,
    Latin lower-cased."""
    text = for_training(text)
    text = _IN_WORD_GERESH.sub("", text)
    text = _IN_WORD_APOSTROPHE.sub("", text)
    text = _THOUSANDS.sub("", text)
    text = _DECIMAL_POINT.sub(_DECIMAL_PLACEHOLDER, text)
    text = "".join(_punct_to_space(c) for c in text).replace(_DECIMAL_PLACEHOLDER, ".")
    return collapse_spaces(text.lower())


_leaderboard_basic = None


def for_leaderboard(text: str) -> str:
    """The ivrit.ai leaderboard normaliser (asr-training `evaluate_model.py`, `HebrewTextNormalizer`), exactly,
    except that the result is trimmed (their jiwer call ignores outer spaces, so WER is unchanged)."""
    global _leaderboard_basic
    # Imported lazily: `hebrew` and transformers' Whisper normaliser are only needed for this form.
    from hebrew import Hebrew
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    if _leaderboard_basic is None:
        _leaderboard_basic = BasicTextNormalizer()
    text = strip_invisible(text)
    text = Hebrew(text).no_niqqud().string
    text = text.replace('"', "").replace("'", "")
    return _leaderboard_basic(text).strip()


NORMALISERS = {"scoring": for_scoring, "leaderboard": for_leaderboard, "training": for_training}
