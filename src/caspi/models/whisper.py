"""Whisper (`WhisperForConditionalGeneration`, e.g. `openai/whisper-large-v3`) transcribing Hebrew.

Labels are the tokenizer's `<|startoftranscript|><|he|><|transcribe|><|notimestamps|> TEXT <|endoftext|>` (the
language token follows the recipe's `model.language`, Hebrew by default) minus
the leading start token (the model prepends `decoder_start_token_id` when it shifts labels right into decoder
inputs), with padding set to -100. Padding is found from the attention mask, not from `pad_token_id`: Whisper's pad
token *is* `<|endoftext|>`, so masking by id would also drop the end-of-text the model must learn to emit.
"""

from __future__ import annotations

import numpy as np
import torch

from caspi.errors import CheckpointError, ConfigError, DataError
from caspi.models.families import (
    layer_regex,
    PEFT_PREFIX,
    GroupDef,
    ModelFamily,
    base_model,
    check_audio_batch,
    check_padding_side,
    from_pretrained_or_raise,
    generation_autocast,
    register,
)
from caspi.models.tokenizer import train_byte_level_bpe

SAMPLE_RATE = 16_000  # Hz
LANGUAGE = "he"  # the default language token; a recipe's `model.language` picks another
TASK = "transcribe"
MAX_SECONDS = 30.0  # Whisper's encoder sees exactly one 30 s window; longer clips would be truncated silently
SOT, EOT = "<|startoftranscript|>", "<|endoftext|>"

TINY_SIZES: dict[str, dict[str, int]] = {
    "xs": dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    ),
    "s": dict(
        d_model=192,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=768,
        decoder_ffn_dim=768,
    ),
}
REFERENCE_SIZES: dict[str, dict[str, int]] = {
    # openai/whisper-large-v3: 1,543,490,560 parameters (counted on the meta device).
    "large-v3": dict(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        decoder_layers=32,
        encoder_attention_heads=20,
        decoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_ffn_dim=5120,
        max_source_positions=1500,
        max_target_positions=448,
    ),
}


def whisper_special_tokens() -> list[str]:
    """Whisper's special tokens in id order. Its tokenizer computes a language token's id as
    `id(<|startoftranscript|>) + 1 + index in LANGUAGES`, so the order is part of the contract."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [
        EOT,
        SOT,
        *(f"<|{code}|>" for code in LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *(f"<|{i * 0.02:.2f}|>" for i in range(1501)),  # timestamps 0.00 … 30.00 s
    ]


class WhisperFamily(ModelFamily):
    name = "whisper"
    hub_ids = ("openai/whisper-large-v3",)
    model_types = ("whisper",)
    lora_layers_group = "decoder_layers"
    max_audio_seconds = MAX_SECONDS

    def language_tag(self, language: str | None) -> str:
        """A Whisper language code from a name or code in Whisper's list (`Hebrew`, `hebrew`, `he`, `<|he|>`)."""
        from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

        if language is None:
            return LANGUAGE
        key = str(language).strip().lower().removeprefix("<|").removesuffix("|>")
        code = TO_LANGUAGE_CODE.get(key, key)
        if code not in LANGUAGES:
            raise ConfigError(
                f"model.language: {language!r} is not one of Whisper's languages; give a name or code from its list, "
                "e.g. 'Hebrew' or 'he'"
            )
        return code

    def load(self, name_or_path: str, revision: str | None = None, dtype: torch.dtype | str = torch.bfloat16):
        """Load `(model, processor)` by hub id (`openai/whisper-large-v3`) or local folder."""
        from transformers import AutoConfig, AutoProcessor, WhisperForConditionalGeneration

        config = from_pretrained_or_raise(AutoConfig.from_pretrained, self.name, name_or_path, revision)
        if getattr(config, "model_type", None) != "whisper":
            raise CheckpointError(
                f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} checkpoint, not Whisper; "
                "pick the family that matches it"
            )
        model = from_pretrained_or_raise(
            WhisperForConditionalGeneration.from_pretrained,
            self.name,
            name_or_path,
            revision,
            config=config,
            dtype=dtype,
        )
        processor = from_pretrained_or_raise(AutoProcessor.from_pretrained, self.name, name_or_path, revision)
        return model, processor

    def reference_config(self, size: str = "large-v3"):
        """Config of `openai/whisper-{size}` built offline, for meta-device counting."""
        from transformers import WhisperConfig

        if size not in REFERENCE_SIZES:
            raise ConfigError(f"unknown Whisper size {size!r}; known: {', '.join(REFERENCE_SIZES)}")
        return WhisperConfig(**REFERENCE_SIZES[size])

    def tiny(
        self,
        vocab_texts: list[str],
        seed: int = 0,
        size: str = "xs",
        vocab_size: int | None = None,
        language: str | None = None,
    ):
        """A random `WhisperForConditionalGeneration` at toy size (128 mels, 30 s window as large-v3) plus a
        `WhisperProcessor` whose byte-level BPE is trained on `vocab_texts` and carries Whisper's full special-token
        layout (languages, tasks, timestamps). `vocab_size=None`: bytes only, no merges. `language`: the
        tokenizer's default language (every language token exists either way). Deterministic in `seed`."""
        from transformers import (
            WhisperConfig,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
            WhisperProcessor,
            WhisperTokenizer,
        )
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        if size not in TINY_SIZES:
            raise ConfigError(f"unknown tiny size {size!r}; known: {', '.join(TINY_SIZES)}")
        vocab, merges = train_byte_level_bpe(vocab_texts, vocab_size)
        specials = whisper_special_tokens()
        vocab = dict(vocab)
        for token in specials:
            assert token not in vocab, f"special token {token} learned as a BPE piece"
            vocab[token] = len(vocab)  # appended in order: special ids follow the BPE vocabulary, as in Whisper's
        tokenizer = WhisperTokenizer(
            vocab=vocab,
            merges=merges,
            pad_token=EOT,
            extra_special_tokens=specials,
            language=self.language_tag(language),
            task=TASK,
        )
        processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)

        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (EOT, SOT, "<|notimestamps|>")}
        config = WhisperConfig(
            vocab_size=len(vocab),
            num_mel_bins=128,
            max_source_positions=1500,  # 30 s at 50 encoder frames/s, as the real model
            max_target_positions=448,
            pad_token_id=ids[EOT],
            bos_token_id=ids[EOT],
            eos_token_id=ids[EOT],
            decoder_start_token_id=ids[SOT],
            begin_suppress_tokens=None,  # the default [220, 50257] are ids of the real vocabulary
            **TINY_SIZES[size],
        )
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
        # Whisper's `generate(language=..., task=...)` reads these from the generation config (a hub checkpoint
        # ships them in generation_config.json).
        gen = model.generation_config
        gen.lang_to_id = {f"<|{code}|>": tokenizer.convert_tokens_to_ids(f"<|{code}|>") for code in LANGUAGES}
        gen.task_to_id = {t: tokenizer.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")}
        gen.is_multilingual = True
        gen.no_timestamps_token_id = ids["<|notimestamps|>"]
        gen.decoder_start_token_id = ids[SOT]
        gen.eos_token_id = ids[EOT]
        gen.pad_token_id = ids[EOT]
        gen.forced_decoder_ids = None
        gen.max_length = config.max_target_positions
        # A generation config marked as derived from the model config is rebuilt from it on load, which would drop
        # lang_to_id & co.; mark it as a config of its own, like a hub checkpoint's.
        gen._from_model_config = False
        return model, processor

    def build_inputs(
        self,
        processor,
        audio: list[np.ndarray],
        texts: list[str] | None = None,
        padding_side: str = "right",
        dtype: torch.dtype | None = None,
        language: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """`input_features` (B, n_mels, 3000): every clip padded to Whisper's 30 s window, cast to `dtype`; with
        texts, `labels` (B, L) right-padded with -100, after the language token of `language` (see `language_tag`).

        `padding_side` is accepted for interface parity and checked, but the labels are always right-padded: the
        decoder has learned absolute positions, so left padding would shift them, and generation prompts have the
        same length in every row so there is nothing to pad.
        """
        check_audio_batch(audio, texts)
        check_padding_side(padding_side)
        code = self.language_tag(language)
        for i, clip in enumerate(audio):
            seconds = len(clip) / SAMPLE_RATE
            if seconds > MAX_SECONDS:
                raise DataError(
                    f"build_inputs: clip {i} is {seconds:.2f} s; Whisper takes at most {MAX_SECONDS:.0f} s "
                    "(longer audio would be cut while its transcript is not)"
                )
        features = processor.feature_extractor(
            [np.asarray(c, np.float32) for c in audio], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        )["input_features"]  # (B, n_mels, 3000)
        batch = {"input_features": features.to(dtype) if dtype is not None else features}
        if texts is not None:
            tokenizer = processor.tokenizer
            tokenizer.set_prefix_tokens(language=code, task=TASK, predict_timestamps=False)
            enc = tokenizer(list(texts), padding="longest", padding_side="right", return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, L+1): SOT lang transcribe notimestamps … EOT
            sot = tokenizer.convert_tokens_to_ids(SOT)
            assert (ids[:, 0] == sot).all(), "Whisper tokenizer did not start labels with <|startoftranscript|>"
            batch["labels"] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, L)
        return batch

    @torch.no_grad()
    def _decode_batch(self, model, processor, audio, *, device, dtype, max_new_tokens, num_beams, autocast_dtype,
                      language, guard):
        """The language token forced (`language`, Hebrew by default), task `transcribe`, no timestamps; the
        repetition `guard` options passed on to `generate`."""
        batch = self.build_inputs(processor, audio, None, dtype=dtype)
        with generation_autocast(device, autocast_dtype):
            generated = model.generate(
                input_features=batch["input_features"].to(device),
                language=self.language_tag(language),
                task=TASK,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=num_beams,
                **guard,
            )
        return [t.strip() for t in processor.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def param_groups(self, config) -> dict[str, GroupDef]:
        """Named groups over Whisper's parameter names; `proj_out` is tied to `model.decoder.embed_tokens`."""
        p = PEFT_PREFIX
        enc_layers = rf"{p}model\.encoder\.layers\.{{i}}\."
        dec_layers = rf"{p}model\.decoder\.layers\.{{i}}\."
        n_enc, n_dec, top = config.encoder_layers, config.decoder_layers, dict(requires="top")
        # fmt: off
        groups = [
            GroupDef("encoder_frontend", rf"{p}model\.encoder\.(?:conv1|conv2)\.", "encoder's two convolutions"),
            GroupDef("encoder_positions", rf"{p}model\.encoder\.embed_positions\.",
                     "encoder sinusoidal positions (frozen by transformers by default)"),
            GroupDef("encoder_layers", enc_layers, "encoder layers (all, or top/bottom/layers)", n_enc),
            GroupDef("encoder_top", enc_layers, "the last N encoder layers ({'top': N})", n_enc, **top),
            GroupDef("encoder_norm", rf"{p}model\.encoder\.layer_norm\.", "encoder final LayerNorm"),
            GroupDef("encoder", rf"{p}model\.encoder\.", "the whole encoder"),
            GroupDef("decoder_layers", dec_layers, "decoder layers (all, or top/bottom/layers)", n_dec),
            GroupDef("decoder_top", dec_layers, "the last N decoder layers ({'top': N})", n_dec, **top),
            GroupDef("decoder_norm", rf"{p}model\.decoder\.layer_norm\.", "decoder final LayerNorm"),
            GroupDef("decoder_positions", rf"{p}model\.decoder\.embed_positions\.", "decoder learned positions"),
            GroupDef("embed_tokens", rf"{p}model\.decoder\.embed_tokens\.", "decoder token embeddings"),
            GroupDef("lm_head", rf"{p}proj_out\.", "output projection (the token embeddings when tied)", lm_head=True),
            GroupDef("decoder", rf"{p}model\.decoder\.", "the whole decoder (embeddings included)"),
            GroupDef("all", r".*", "every parameter"),
        ]
        # fmt: on
        return {g.name: g for g in groups}

    def audio_embedding_module(self, model: torch.nn.Module) -> torch.nn.Module:
        base = base_model(model)
        return base.model.encoder

    def unpack_audio_embeddings(self, model, output, batch, frame_lens):
        """The encoder's `last_hidden_state` (B, 1500, H) covers the 30 s window; its stride-2 conv halves the mel
        frames, so a clip of F frames owns the first ceil(F / 2) positions."""
        hidden = output.last_hidden_state  # (B, T_a, H)
        lens = torch.clamp((frame_lens + 1) // 2, max=hidden.shape[1])  # (B,)
        return hidden, lens

    def lora_target_regex(self, layers: list[int] | None = None) -> str:
        """Decoder attention (self and cross) and MLP projections only."""
        return layer_regex(
            r"model\.decoder\.layers\.{i}\.(?:(?:self_attn|encoder_attn)\.(?:q|k|v|out)_proj|fc1|fc2)", layers
        )


FAMILY = register(WhisperFamily())
