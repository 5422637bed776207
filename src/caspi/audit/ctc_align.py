"""CTC forced alignment: does a clip's audio carry its transcript? The core of the Phase 0 `ctc` scorer.

    aligner = CtcAligner("facebook/mms-1b-all", target_lang="heb")        # or a Hebrew wav2vec2 CTC fine-tune
    rows = aligner.align(audio, texts)   # one dict per clip: coverage, mean_confidence, log_likelihood_per_char ...

`forced_align` is a Viterbi search over the standard CTC topology (the target interleaved with blanks, 2S+1
states), vectorised over states with numpy; `CtcAligner` runs any transformers `AutoModelForCTC` checkpoint
batched, tokenises each transcript with the checkpoint's own character vocabulary and turns the alignment into
per-clip numbers. A token's *confidence* is the mean posterior probability of its label over the frames the
Viterbi path spends on it (torchaudio's `merge_tokens` convention); *coverage* is the share of transcript
characters whose confidence reaches `threshold`. A transcript the audio does not carry must still be placed
somewhere by the forced path, so its characters land on frames where the model predicts something else and get
low confidence.

Written rather than taken from a package: torchaudio has no CPU build here, and `ctc-segmentation` solves a
different problem (finding utterances inside long audio, with its own windowed score); the Viterbi below is
~60 lines and is checked against brute-force path enumeration and `torch.nn.functional.ctc_loss` in the tests.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caspi.data.text import for_scoring
from caspi.errors import CheckpointError
from caspi.models.families import from_pretrained_or_raise

SCORE_VERSION = "1"  # bump when the alignment, confidence or coverage definition changes
DEFAULT_THRESHOLD = 0.5  # mean posterior a character needs to count as covered (module docstring, CtcAligner)
SAMPLE_RATE = 16_000  # Hz; every CTC speech checkpoint Caspi uses is 16 kHz
HEBREW_LETTERS = "אבגדהוזחטיךכלםמןנסעףפץצקרשת"  # the 27 letters incl. final forms, as for_scoring leaves them
FAMILY = "ctc"  # the name CheckpointError messages give the loader


@dataclass
class Alignment:
    """The Viterbi alignment of S target tokens to T frames.

    `token_frames[k]` is the first and last frame (inclusive) the best path spends on target token k;
    `token_confidence[k]` is the mean over those frames of the posterior probability of token k's label (exp of
    its log-probability); `log_likelihood` is the path's summed log-probability. When the transcript cannot fit
    (`feasible` False: T < S + number of adjacent repeated labels, or every path has probability 0), the frames
    are (-1, -1), the confidences 0 and the log-likelihood -inf.
    """

    token_frames: list[tuple[int, int]]
    token_confidence: np.ndarray  # (S,) float64, probabilities in [0, 1]
    log_likelihood: float
    feasible: bool


def _infeasible(num_tokens: int) -> Alignment:
    return Alignment([(-1, -1)] * num_tokens, np.zeros(num_tokens), float("-inf"), False)


def forced_align(log_probs: np.ndarray | torch.Tensor, targets: Sequence[int], blank: int) -> Alignment:
    """Viterbi-align `targets` (label ids, no blanks) to `log_probs` (T, V), a log-softmax over V labels.

    States are the blank-interleaved target `[blank, t1, blank, t2, ..., tS, blank]`; from state s a path may stay,
    move to s+1, or skip the blank to s+2 when the labels on either side of it differ. The path starts in state 0
    or 1 and ends in one of the last two. Cost: O(T·S) time in a Python loop over frames (each step is a numpy
    operation over all states) and a (T, 2S+1) int8 back-pointer table.
    """
    if isinstance(log_probs, torch.Tensor):
        log_probs = log_probs.detach().to("cpu", torch.float64).numpy()
    lp = np.asarray(log_probs, dtype=np.float64)  # (T, V)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {lp.shape}")
    num_frames, vocab = lp.shape
    tgt = np.asarray(targets, dtype=np.int64).reshape(-1)  # (S,)
    num_tokens = len(tgt)
    if not 0 <= blank < vocab:
        raise ValueError(f"blank id {blank} is outside the vocabulary of {vocab} labels")
    if num_tokens and (tgt.min() < 0 or tgt.max() >= vocab or (tgt == blank).any()):
        raise ValueError(f"targets must be label ids in [0, {vocab}) other than the blank {blank}")

    repeats = int(np.count_nonzero(tgt[1:] == tgt[:-1]))  # each adjacent repeat needs a blank frame between
    if num_frames < num_tokens + repeats:
        return _infeasible(num_tokens)
    if num_frames == 0:  # and no tokens: the empty path
        return Alignment([], np.zeros(0), 0.0, True)

    num_states = 2 * num_tokens + 1
    ext = np.full(num_states, blank, dtype=np.int64)
    ext[1::2] = tgt
    can_skip = np.zeros(num_states, dtype=bool)  # state s may be entered from s-2 (jumping the blank between)
    can_skip[3::2] = tgt[1:] != tgt[:-1]
    emit = lp[:, ext]  # (T, 2S+1): log-prob of each state's label at each frame

    neg_inf = -np.inf
    delta = np.full(num_states, neg_inf)  # best log-prob of a path ending in each state at the current frame
    delta[0] = emit[0, 0]
    if num_tokens:
        delta[1] = emit[0, 1]
    back = np.zeros((num_frames, num_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    cand = np.full((3, num_states), neg_inf)  # (3, 2S+1); cand[1, 0] and cand[2, :2] stay -inf
    states = np.arange(num_states)
    for t in range(1, num_frames):
        cand[0] = delta
        cand[1, 1:] = delta[:-1]
        cand[2, 2:] = np.where(can_skip[2:], delta[:-2], neg_inf)
        choice = cand.argmax(axis=0)  # ties go to the lowest move (stay), so the result is deterministic
        back[t] = choice
        delta = cand[choice, states] + emit[t]

    ends = [num_states - 1] if num_tokens == 0 else [num_states - 1, num_states - 2]
    end = max(ends, key=lambda s: delta[s])
    score = float(delta[end])
    if not np.isfinite(score):
        return _infeasible(num_tokens)

    path = np.empty(num_frames, dtype=np.int64)  # (T,) state index per frame
    state = int(end)
    for t in range(num_frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])

    on_token = np.flatnonzero(path % 2 == 1)  # frames spent on a target token (not a blank)
    token_of = (path[on_token] - 1) // 2  # non-decreasing: the path is monotone
    first = np.searchsorted(token_of, np.arange(num_tokens), side="left")
    last = np.searchsorted(token_of, np.arange(num_tokens), side="right") - 1
    frames = [(int(on_token[a]), int(on_token[b])) for a, b in zip(first, last)]
    posterior = np.exp(lp[on_token, tgt[token_of]])  # (frames on tokens,)
    confidence = np.bincount(token_of, weights=posterior, minlength=num_tokens) / np.bincount(
        token_of, minlength=num_tokens
    )
    return Alignment(frames, confidence, score, True)


@dataclass
class _Target:
    ids: list[int]  # label ids handed to forced_align, word delimiters included
    weights: np.ndarray  # (S,) characters each token stands for; 0 for word delimiters
    oov_chars: int


class CtcAligner:
    """Force-align transcripts to audio with a CTC checkpoint and report how much of each transcript it carries.

    `model` is a hub id or local folder (loaded with `AutoModelForCTC` / `AutoProcessor`; hub and missing-file
    failures become a CheckpointError naming the id) or an already built module, in which case `processor`
    (feature extractor + CTC tokenizer) is required. `target_lang` selects a language adapter of a multilingual
    checkpoint such as `facebook/mms-1b-all` (`"heb"`). `threshold` is the mean posterior at which a character
    counts as covered. The default 0.5 means that, on average over the frames the path puts it on, the model gives
    the character more probability than blank and all other labels together: a checkpoint that hears the character
    is usually far above it (its peak frame is near 1), one forced onto audio that does not carry it far below.
    It is stricter than NeMo's CTC-segmentation cut (REFERENCE.md: keep segments scoring >= -2, a mean
    log-posterior over a window, i.e. a geometric-mean posterior >= e^-2 = 0.14, blanks included), because it is
    taken per character and then summarised as a share. `normalise` applies `caspi.data.text.for_scoring` to each
    transcript first. `score_version` names the method and its settings for reports.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        processor=None,
        *,
        revision: str | None = None,
        target_lang: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
        threshold: float = DEFAULT_THRESHOLD,
        normalise: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is a probability in (0, 1], got {threshold}")
        if isinstance(model, str):
            model_id = model
            model, processor = self._load(model, processor, revision, target_lang, dtype)
        else:
            if processor is None:
                raise ValueError("CtcAligner needs the processor when given a model object")
            model_id = getattr(model.config, "_name_or_path", "") or type(model).__name__
            if target_lang is not None:
                _switch_language(model, processor, model_id, target_lang, revision)
        self.model_id = model_id + (f"@{revision}" if revision else "") + (f"[{target_lang}]" if target_lang else "")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.feature_extractor = processor.feature_extractor
        self.threshold = threshold
        self.normalise = normalise
        # A feature extractor without an attention mask (wav2vec2-base style, group norm) normalises over padding
        # and its model reads the padding: such checkpoints run one clip at a time so a batch cannot change a score.
        # So does a model with no output-length formula (each clip's frame count is then the logits' length).
        batchable = getattr(self.feature_extractor, "return_attention_mask", False) and hasattr(
            self.model, "_get_feat_extract_output_lengths"
        )
        self.batch_size = batch_size if batchable else 1
        self.blank = self._blank_id()
        vocab = self.tokenizer.get_vocab()
        self._vocab = vocab
        delimiter = getattr(self.tokenizer, "word_delimiter_token", None)
        self._delimiter_id = vocab.get(delimiter) if delimiter else None
        # Labels the CTC head can emit; a tokenizer may hold added tokens (e.g. `<s>`) beyond them.
        self._num_labels = getattr(self.model.config, "vocab_size", None) or len(vocab)
        self.score_version = (
            f"ctc_align/{SCORE_VERSION} conf=mean_posterior threshold={threshold:g} "
            f"text={'for_scoring' if normalise else 'as_given'} model={self.model_id}"
        )

    @staticmethod
    def _load(model_id: str, processor, revision, target_lang, dtype):
        from transformers import AutoModelForCTC, AutoProcessor

        model = from_pretrained_or_raise(AutoModelForCTC.from_pretrained, FAMILY, model_id, revision, dtype=dtype)
        if processor is None:
            # A multilingual (nested) vocabulary must be opened on a language, else it is read as one flat vocab.
            extra = {"target_lang": target_lang} if target_lang else {}
            processor = from_pretrained_or_raise(AutoProcessor.from_pretrained, FAMILY, model_id, revision, **extra)
        if target_lang is not None:
            _switch_language(model, processor, model_id, target_lang, revision)
        return model, processor

    def _blank_id(self) -> int:
        # wav2vec2-style CTC heads use the pad token as the blank (transformers' ctc_loss gets blank=pad_token_id).
        blank = getattr(self.model.config, "pad_token_id", None)
        if blank is None:
            blank = self.tokenizer.pad_token_id
        if blank is None:
            raise CheckpointError(f"{FAMILY}: {self.model_id!r} names no pad token to use as the CTC blank")
        return int(blank)

    def encode(self, text: str) -> _Target:
        """Label ids for `text` (normalised first when `normalise`): characters outside the vocabulary are dropped
        and counted; spaces become the word delimiter where the vocabulary has one (runs collapsed, none at the
        ends), else they are dropped."""
        if self.normalise:
            text = for_scoring(text)
        ids: list[int] = []
        weights: list[int] = []
        oov = 0
        delimiter = getattr(self.tokenizer, "word_delimiter_token", None)
        for token in self.tokenizer.tokenize(text):
            if token == delimiter or token.isspace():
                if self._delimiter_id is not None and ids and ids[-1] != self._delimiter_id:
                    ids.append(self._delimiter_id)
                    weights.append(0)
                continue
            token_id = self._vocab.get(token)
            if (
                token_id is None
                or token_id in (self.blank, self.tokenizer.unk_token_id)
                or token_id >= self._num_labels
            ):
                oov += len(token)
                continue
            ids.append(token_id)
            weights.append(len(token))
        if ids and ids[-1] == self._delimiter_id:
            ids.pop()
            weights.pop()
        return _Target(ids, np.asarray(weights, dtype=np.float64), oov)

    @torch.inference_mode()
    def log_probs(self, audio: list[np.ndarray]) -> list[np.ndarray]:
        """Per-clip (T_i, V) log-softmax outputs, computed in batches of similar length, padding cut off."""
        order = sorted(range(len(audio)), key=lambda i: len(audio[i]))  # similar lengths share a batch
        out: list[np.ndarray | None] = [None] * len(audio)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            clips = [np.asarray(audio[i], dtype=np.float32).reshape(-1) for i in chunk]
            inputs = self.feature_extractor(clips, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
            values = inputs["input_values"].to(self.device, self.dtype)  # (B, samples)
            mask = inputs.get("attention_mask")
            kwargs = {"attention_mask": mask.to(self.device)} if mask is not None else {}
            logits = self.model(values, **kwargs).logits  # (B, frames, V)
            lengths = torch.tensor([len(c) for c in clips])
            if hasattr(self.model, "_get_feat_extract_output_lengths"):
                frames = self.model._get_feat_extract_output_lengths(lengths).tolist()
            else:  # no length formula: batch_size is 1 (see __init__)
                frames = [logits.shape[1]] * len(clips)
            log_probs = logits.float().log_softmax(dim=-1).cpu().numpy()
            for row, (index, n) in enumerate(zip(chunk, frames)):
                out[index] = log_probs[row, : max(int(n), 0)]
        return out  # type: ignore[return-value]

    def align(self, audio: list[np.ndarray], texts: list[str]) -> list[dict]:
        """Score each (16 kHz mono float32 clip, transcript) pair. Per clip:

        - `coverage`: share of the transcript's in-vocabulary characters (word delimiters not counted) whose
          confidence is >= `threshold`; 0.0 when the alignment is infeasible or there are no such characters;
        - `mean_confidence`: their mean confidence (0.0 likewise);
        - `log_likelihood_per_char`: Viterbi path log-likelihood / `chars` (None when infeasible or `chars` is 0);
        - `oov_chars`: characters dropped because the checkpoint's vocabulary lacks them (spaces excluded);
        - `frames`: model output frames of the clip; `chars`: characters aligned; `feasible`: the transcript fits.
        """
        if len(audio) != len(texts):
            raise ValueError(f"align got {len(audio)} clips but {len(texts)} transcripts")
        rows = []
        for lp, text in zip(self.log_probs(audio), texts):
            target = self.encode(text)
            alignment = forced_align(lp, target.ids, self.blank)
            chars = int(target.weights.sum())
            ok = alignment.feasible and chars > 0
            covered = float(target.weights[alignment.token_confidence >= self.threshold].sum())
            rows.append(
                {
                    "coverage": covered / chars if ok else 0.0,
                    "mean_confidence": float(target.weights @ alignment.token_confidence) / chars if ok else 0.0,
                    "log_likelihood_per_char": alignment.log_likelihood / chars if ok else None,
                    "oov_chars": target.oov_chars,
                    "frames": int(lp.shape[0]),
                    "chars": chars,
                    "feasible": alignment.feasible,
                }
            )
        return rows


def _switch_language(model, processor, model_id: str, target_lang: str, revision: str | None) -> None:
    """Point a multilingual (MMS-style) tokenizer and model at one language's vocabulary and adapter weights."""
    try:
        processor.tokenizer.set_target_lang(target_lang)
        model.load_adapter(target_lang, revision=revision)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or ["(no message)"])[0]
        raise CheckpointError(
            f"{FAMILY}: cannot switch {model_id!r} to language {target_lang!r}: {type(exc).__name__}: {first}; "
            "target_lang is for multilingual checkpoints with language adapters (e.g. facebook/mms-1b-all, 'heb')"
        ) from exc


def tiny_ctc_model(vocab_chars: str = HEBREW_LETTERS, seed: int = 0):
    """A randomly initialised toy `Wav2Vec2ForCTC` (hidden 32, 2 layers, 20 ms frames) and its
    `Wav2Vec2Processor`, built offline and deterministically. Vocabulary: `<pad>` (the CTC blank, id 0), `<unk>`,
    the word delimiter `|`, then the distinct non-space characters of `vocab_chars` in order."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    vocab = {"<pad>": 0, "<unk>": 1, "|": 2}
    for char in vocab_chars:
        if not char.isspace() and char not in vocab:
            vocab[char] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads its vocabulary from a file, once
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file), unk_token="<unk>", pad_token="<pad>", bos_token=None, eos_token=None
        )
    features = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    processor = Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        pad_token_id=0,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32, 32),
        conv_kernel=(10, 4, 4, 4),
        conv_stride=(5, 4, 4, 4),  # 320 samples: 20 ms frames, as in full-size wav2vec2
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",  # per-frame norm: padding cannot leak into a clip (unlike "group")
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(config).eval()
    return model, processor
