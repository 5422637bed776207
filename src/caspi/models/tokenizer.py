"""Tiny tokenizers built offline with `tokenizers`, for tests and the CPU demo.

Real checkpoints ship their own tokenizer; a tiny random model needs one that (a) covers the training texts,
(b) carries the family's special tokens with the ids the family's code expects, and (c) round-trips text exactly
(`decode(encode(s)) == s`), because the label-mask tests compare decoded strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from caspi.errors import ConfigError

UNK = "<unk>"


def train_unicode_bpe(
    texts: Iterable[str],
    special_tokens: list[str],
    plain_added_tokens: list[str] = (),
    vocab_size: int | None = None,
) -> Tokenizer:
    """Train a BPE over Unicode characters (not bytes) on `texts`; `vocab_size=None` gives a character tokenizer.

    Layout of ids: `special_tokens` first (0..S-1, in order), then the alphabet, then merges, then
    `plain_added_tokens` (atomic but not special: `skip_special_tokens` keeps them, e.g. Qwen's `<asr_text>`).
    Characters are used rather than bytes so one Hebrew letter is one token (bytes would give two). Spaces are
    kept as a `▁` prefix (Metaspace, never prepended), so decoding restores the text exactly. Newlines are split
    off first so that a merge can never straddle a chat-template boundary such as `assistant\\n|language`.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError("tiny tokenizer: vocab_texts is empty; give at least one transcript to build it from")
    alphabet = sorted(set("".join(texts)) - {" "} | {"▁"})
    n_base = len(special_tokens) + len(alphabet) + 1  # +1: the unknown token
    if vocab_size is None:
        vocab_size = n_base  # no merges: a character tokenizer
    elif vocab_size < n_base:
        raise ConfigError(
            f"tiny tokenizer: vocab_size {vocab_size} is smaller than the {n_base} special tokens and characters "
            "it must hold; raise it or pass None for a character tokenizer"
        )
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\r\n]+"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*special_tokens, UNK],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if plain_added_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_added_tokens])
    return tok


def train_byte_level_bpe(
    texts: Iterable[str], vocab_size: int | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a GPT-2-style byte-level BPE (Whisper's kind) and return `(vocab, merges)` for `WhisperTokenizer`.

    `vocab_size=None` keeps only the 256 byte symbols (no merges). Special tokens are added by the caller, after
    these ids, in the order Whisper's code assumes.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError("tiny tokenizer: vocab_texts is empty; give at least one transcript to build it from")
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size or n_bytes, n_bytes),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # `Tokenizer.to_str()` is the public way to read the trained merges back out of the Rust model; a merge is
    # serialised as a pair (tokenizers >= 0.20) or as "a b" (older).
    raw_merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw_merges]
    return tok.get_vocab(), merges
