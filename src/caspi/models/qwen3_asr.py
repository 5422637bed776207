"""Qwen3-ASR (transformers' native `Qwen3ASRForConditionalGeneration`, hub repos `Qwen/Qwen3-ASR-*-hf`).

Training target, per clip (REFERENCE.md, "Chat template and labels"):

    <|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\n<|audio_start|><|audio_pad|>×N<|audio_end|><|im_end|>\\n
    <|im_start|>assistant\\nlanguage Hebrew<asr_text>TEXT<|im_end|>\\n

The tag after `language` is the recipe's `model.language` (Hebrew by default). Loss covers exactly
`language Hebrew<asr_text>TEXT<|im_end|>`: our chat template wraps that span in
`{% generation %}` and the labels come from `return_assistant_tokens_mask=True`, so they are right under left and
right padding alike (the official recipe masks by position and breaks under left padding, Qwen3-ASR issue #70).
The processor's `apply_transcription_request` rejects "Hebrew", so the prefill is written here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caspi.errors import CheckpointError, ConfigError
from caspi.models.convert import ensure_native
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
    is_local_path,
    register,
)
from caspi.models.tokenizer import train_unicode_bpe

SAMPLE_RATE = 16_000  # Hz
LANGUAGE = "Hebrew"  # the default tag in `language Hebrew<asr_text>`; not one of the base model's 30 languages
ASR_TEXT = "<asr_text>"  # an added token that is *not* special: skip_special_tokens keeps it, so we can split on it
# Special tokens of the Qwen tokenizer that the template and the model use, in the order the tiny tokenizer gives
# them ids (0..5). Real checkpoints have their own ids (e.g. <|audio_pad|> 151676); nothing here hard-codes them.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
PAD, EOS, AUDIO_PAD, AUDIO_START, AUDIO_END = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|audio_pad|>",
    "<|audio_start|>",
    "<|audio_end|>",
)

# Renders the same string as the official template for a (system?, user audio, assistant) conversation (pinned in
# tests against upstream's expected prompt), plus `{% generation %}` around the assistant content and its
# <|im_end|> so `return_assistant_tokens_mask` marks exactly the loss span. The newline after <|im_end|> is outside
# the span on purpose: the model stops at <|im_end|> and never predicts it. Used for real checkpoints too, whose
# shipped template has no generation markers (it would give an all-zero mask).
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'audio' -%}{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}{{- '<|im_start|>system\\n<|im_end|>\\n' -}}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- render(message['content']) -}}{{- '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}{{- render(message['content']) -}}{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Tiny configs of the real architecture. "xs" is REFERENCE.md's tiny model (unit tests); "s" is the size that
# learned on 2 CPU cores in minutes (REFERENCE.md, "Training a tiny Qwen3-ASR from scratch").
TINY_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "xs": {
        "audio": dict(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, downsample_hidden_size=8
        ),
        "text": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
        ),
    },
    "s": {
        "audio": dict(
            d_model=192, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=768, downsample_hidden_size=32
        ),
        "text": dict(
            hidden_size=192,
            intermediate_size=576,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=48,
        ),
    },
}

# Published checkpoints, for counting on the meta device (REFERENCE.md "Sizes"; the 1.7B counts are pinned in
# tests). transformers' `Qwen3ASRConfig()` defaults are the 1.7B's except the encoder's `output_dim` (3584): the
# 1.7B's projector ends at the LLM's hidden size, 2048 (with 3584 the counts and the forward pass are wrong).
REFERENCE_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "1.7B": {"audio": dict(output_dim=2048), "text": {}},
    "0.6B": {
        "audio": dict(
            encoder_layers=18, d_model=896, encoder_attention_heads=14, encoder_ffn_dim=3584, output_dim=1024
        ),
        "text": dict(hidden_size=1024, intermediate_size=3072),
    },
}
# The official repos in the original layout; each has a converted `-hf` twin.
ORIGINAL_HUB_IDS = ("Qwen/Qwen3-ASR-1.7B", "Qwen/Qwen3-ASR-0.6B")
HE_INIT_GAIN = 3.0  # std = gain / sqrt(fan_in) for the conv front end; see `init_audio_frontend`


def init_audio_frontend(model: torch.nn.Module, gain: float = HE_INIT_GAIN) -> None:
    """Re-initialise the audio conv front end (`conv2d1..3`, `conv_out`) with normal(0, gain/sqrt(fan_in)).

    Why: with transformers' normal(0, 0.02) init, the front end's output has RMS ~3e-4 while the sinusoidal
    positions added to it have RMS ~0.7, so the audio embeddings carry almost no signal and a model trained from
    scratch learns only a text prior (CER stalls near 0.8). He-style scaling at gain 3 brings the audio RMS to
    ~0.5 (REFERENCE.md, measured). Biases are zeroed. Uses the global torch RNG.
    """
    tower = model.model.audio_tower
    with torch.no_grad():
        for layer in (tower.conv2d1, tower.conv2d2, tower.conv2d3, tower.conv_out):
            fan_in = layer.weight[0].numel()  # in_channels·k·k for a conv, in_features for the linear
            layer.weight.normal_(0.0, gain / math.sqrt(fan_in))
            if layer.bias is not None:
                layer.bias.zero_()


class Qwen3ASRFamily(ModelFamily):
    name = "qwen3_asr"
    hub_ids = ("Qwen/Qwen3-ASR-1.7B-hf", "Qwen/Qwen3-ASR-0.6B-hf")
    model_types = ("qwen3_asr",)
    lora_layers_group = "llm_layers"
    # No fixed window: the encoder takes any number of 100-frame chunks (T % 100 == 0 is padded for), and
    # REFERENCE.md gives no maximum; long clips cost memory (about 13 audio tokens per second), not correctness.
    max_audio_seconds = None

    def language_tag(self, language: str | None) -> str:
        """The tag as written in `language X<asr_text>`: any name, kept as given (the base model's own tags are
        English names such as `English`; a new language is a new tag). Empty, multi-line or `<`/`>`-holding values
        are refused: they would break the prompt."""
        if language is None:
            return LANGUAGE
        tag = str(language).strip()
        if not tag or any(c in tag for c in "<>\n\r"):
            raise ConfigError(
                f"model.language: {language!r} cannot be a Qwen3-ASR language tag (`language X<asr_text>`); give a "
                "name such as 'Hebrew'"
            )
        return tag

    # --- loading ---------------------------------------------------------------------------------------------

    def load(self, name_or_path: str, revision: str | None = None, dtype: torch.dtype | str = torch.bfloat16,
             processor_from: str | None = None):
        """Load `(model, processor)` by hub id (`Qwen/Qwen3-ASR-1.7B-hf`, `-0.6B-hf`) or local folder.

        A local folder in the original `qwen-asr` layout or an HF Trainer `checkpoint-N/` folder is converted to
        the native layout first, once, into a cache (`caspi.models.convert.ensure_native`, which says so on
        stderr); `processor_from` (a hub id or folder) supplies processor files such a folder lacks. A hub repo in
        the original layout (`Qwen/Qwen3-ASR-1.7B`, not `-hf`) is refused: transformers 5.x ignores its nested
        `thinker_config` and would silently build a default-sized model (REFERENCE.md, "Two stacks").
        """
        from transformers import AutoConfig, AutoProcessor, Qwen3ASRForConditionalGeneration

        if is_local_path(name_or_path) and Path(name_or_path).is_dir():
            name_or_path = str(ensure_native(name_or_path, processor_from=processor_from))
        config = from_pretrained_or_raise(AutoConfig.from_pretrained, self.name, name_or_path, revision)
        self.check_config(config, name_or_path)
        model = from_pretrained_or_raise(
            Qwen3ASRForConditionalGeneration.from_pretrained,
            self.name,
            name_or_path,
            revision,
            config=config,
            dtype=dtype,
        )
        processor = from_pretrained_or_raise(AutoProcessor.from_pretrained, self.name, name_or_path, revision)
        return model, processor

    def check_config(self, config, name_or_path: str) -> None:
        """CheckpointError unless `config` is a native Qwen3-ASR config whose projector feeds the LLM."""
        if getattr(config, "model_type", None) != "qwen3_asr":
            raise CheckpointError(
                f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} checkpoint, not Qwen3-ASR "
                "(model_type 'qwen3_asr'); pick the family that matches it"
            )
        if hasattr(config, "thinker_config"):
            # Local folders are converted before their config is read (`load`), so this is a hub repo.
            converted = (f"'{name_or_path}-hf'" if name_or_path in ORIGINAL_HUB_IDS
                         else "(e.g. 'Qwen/Qwen3-ASR-1.7B-hf')")
            raise CheckpointError(
                f"{name_or_path!r} is in the original Qwen3-ASR layout (`thinker_config`), which transformers 5.x "
                f"misreads (you would get default weights' shapes); load the converted repo {converted}, or download "
                f"this one (`hf download {name_or_path} --local-dir DIR`) and convert it: `caspi convert DIR --out "
                "DST` (or give DIR itself: local folders are converted on load)"
            )
        if config.audio_config.output_dim != config.text_config.hidden_size:
            raise CheckpointError(
                f"{name_or_path!r}: audio_config.output_dim {config.audio_config.output_dim} != "
                f"text_config.hidden_size {config.text_config.hidden_size}; the projector cannot feed the LLM"
            )

    def reference_config(self, size: str = "1.7B"):
        """Config of `Qwen/Qwen3-ASR-{size}-hf` built offline ("1.7B" or "0.6B"), for meta-device counting."""
        from transformers import Qwen3ASRConfig

        if size not in REFERENCE_SIZES:
            raise ConfigError(f"unknown Qwen3-ASR size {size!r}; known: {', '.join(REFERENCE_SIZES)}")
        spec = REFERENCE_SIZES[size]
        config = Qwen3ASRConfig(audio_config=dict(spec["audio"]))
        for key, value in spec["text"].items():
            setattr(config.text_config, key, value)
        return config

    # --- tiny ------------------------------------------------------------------------------------------------

    def tiny(
        self,
        vocab_texts: list[str],
        seed: int = 0,
        size: str = "xs",
        vocab_size: int | None = None,
        audio_init: str = "default",
        language: str | None = None,
    ):
        """A random `Qwen3ASRForConditionalGeneration` at toy size plus a processor with an offline tokenizer.

        `vocab_texts`: transcripts the tokenizer must cover (template words are added). `size`: "xs" (~0.1 M
        params, unit tests) or "s" (REFERENCE.md's 'S', ~3 M). `vocab_size`: None for a character tokenizer
        (what learned in REFERENCE.md), or a BPE size. `audio_init`: "default" (transformers' normal(0, 0.02)) or
        "he" (`init_audio_frontend`: needed to train from scratch, see its docstring). `language`: the tag the
        prompt will carry (its characters join the alphabet; None: Hebrew). Deterministic in `seed`.
        """
        from transformers import (
            PreTrainedTokenizerFast,
            Qwen3ASRConfig,
            Qwen3ASRFeatureExtractor,
            Qwen3ASRForConditionalGeneration,
            Qwen3ASRProcessor,
        )

        if size not in TINY_SIZES:
            raise ConfigError(f"unknown tiny size {size!r}; known: {', '.join(TINY_SIZES)}")
        if audio_init not in ("default", "he"):
            raise ConfigError(f"audio_init must be 'default' or 'he', got {audio_init!r}")

        # The template's own words must be in the alphabet, or the prompt would hold <unk>s.
        template_words = f"system\nuser\nassistant\nlanguage {self.language_tag(language)}"
        backend = train_unicode_bpe(
            [*vocab_texts, template_words], SPECIAL_TOKENS, plain_added_tokens=[ASR_TEXT], vocab_size=vocab_size
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token=EOS,
            pad_token=PAD,
            unk_token="<unk>",
            # The processor reads these three attributes (REFERENCE.md, "Processor with an offline tokenizer").
            extra_special_tokens={
                "audio_token": AUDIO_PAD,
                "audio_bos_token": AUDIO_START,
                "audio_eos_token": AUDIO_END,
            },
        )
        processor = Qwen3ASRProcessor(
            feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
        )

        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, EOS, AUDIO_PAD)}
        dims = TINY_SIZES[size]
        text_config = dict(
            model_type="qwen3",
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=ids[PAD],
            eos_token_id=ids[EOS],
            pad_token_id=ids[PAD],
            **dims["text"],
        )
        audio_config = dict(
            model_type="qwen3_asr_encoder",
            num_mel_bins=128,
            output_dim=dims["text"]["hidden_size"],  # the projector must end at the LLM width
            **dims["audio"],
        )
        config = Qwen3ASRConfig(
            audio_config=audio_config,
            text_config=text_config,
            audio_token_id=ids[AUDIO_PAD],
            timestamp_token_id=-1,  # forced-aligner only; the tiny vocabulary has no <timestamp>
            pad_token_id=ids[PAD],
            eos_token_id=[ids[EOS], ids[PAD]],
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = Qwen3ASRForConditionalGeneration(config)
        if audio_init == "he":
            init_audio_frontend(model)
        model.generation_config.eos_token_id = [ids[EOS], ids[PAD]]
        model.generation_config.pad_token_id = ids[PAD]
        model.generation_config.bos_token_id = None
        return model, processor

    # --- inputs, labels, decoding ----------------------------------------------------------------------------

    def build_inputs(
        self,
        processor,
        audio: list[np.ndarray],
        texts: list[str] | None = None,
        padding_side: str = "right",
        dtype: torch.dtype | None = None,
        language: str | None = None,
        prompt: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tensors for `model(**batch)` (texts given) or `model.generate(**batch)` (texts None).

        Returns `input_ids`, `attention_mask` (B, L); `input_features` (B, 128, T) with T a multiple of 100 mel
        frames, cast to `dtype` (pass the model's); `input_features_mask` (B, T); and with texts, `labels` (B, L):
        the token ids of `language {language}<asr_text>TEXT<|im_end|>`, -100 everywhere else. Without texts the
        prompt ends with the assistant prefill `language {language}<asr_text>`, so generation yields TEXT.
        `prompt` becomes the system message (context / hot words), empty by default as upstream.
        """
        check_audio_batch(audio, texts)
        check_padding_side(padding_side)
        prefill = f"language {self.language_tag(language)}{ASR_TEXT}"
        conversations = []
        for i, clip in enumerate(audio):
            messages: list[dict[str, Any]] = []
            if prompt is not None:
                messages.append({"role": "system", "content": [{"type": "text", "text": prompt}]})
            messages.append({"role": "user", "content": [{"type": "audio", "audio": np.asarray(clip, np.float32)}]})
            answer = prefill + (texts[i] if texts is not None else "")
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            conversations.append(messages)

        training = texts is not None
        # Each clip is processed alone and the results padded here, so that a clip's inputs (hence its loss and its
        # transcript) do not depend on its batch-mates. Processed together, they would: the feature extractor pads
        # the *audio* to the longest clip, which gives a shorter clip one more valid mel frame than alone (its mask
        # is ceil(N/160) frames instead of floor) and fills its padded frames with the log-mel floor of silence
        # instead of zeros; the encoder's convolutions read those frames at the edge of the clip's last 100-frame
        # chunk, and windowed attention carries the change to every audio token of the window. Measured on the demo's
        # Round 1: per-clip loss changed by up to 0.6 nats/token, and eval CER per domain by up to 1.5 points
        # between eval.batch_size 1 and 64.
        rows = [processor.apply_chat_template(
            [conversation],
            chat_template=CHAT_TEMPLATE,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=training,
            continue_final_message=not training,
            processor_kwargs={"sampling_rate": SAMPLE_RATE},
        ) for conversation in conversations]
        pad_id = processor.tokenizer.pad_token_id
        batch = {
            "input_ids": _pad_rows([r["input_ids"][0] for r in rows], pad_id, padding_side),  # (B, L)
            "attention_mask": _pad_rows([r["attention_mask"][0] for r in rows], 0, padding_side),  # (B, L)
            # Zeros after a clip's frames, as the extractor pads one clip to a whole 100-frame chunk.
            "input_features": _pad_rows([r["input_features"][0] for r in rows], 0.0, "right"),  # (B, n_mels, T)
            "input_features_mask": _pad_rows([r["input_features_mask"][0] for r in rows], 0, "right"),  # (B, T)
        }
        if dtype is not None:
            batch["input_features"] = batch["input_features"].to(dtype)
        if training:
            mask = _pad_rows([torch.as_tensor(r["assistant_masks"][0]) for r in rows], 0, padding_side).bool()
            assert mask.any(dim=1).all(), "chat template produced an empty assistant mask"
            batch["labels"] = batch["input_ids"].masked_fill(~mask, -100)  # (B, L)
        return batch

    def frame_lengths(self, inputs: dict[str, torch.Tensor], audio_lens: torch.Tensor) -> torch.Tensor:
        """The processor marks the frames of real audio in `input_features_mask` (B, T): their count per row."""
        return inputs["input_features_mask"].sum(dim=1)

    @torch.no_grad()
    def _decode_batch(self, model, processor, audio, *, device, dtype, max_new_tokens, num_beams, autocast_dtype,
                      language, guard):
        """The text the model writes after `language {language}<asr_text>` (None: Hebrew). Prompts are left-padded
        (a batched decoder-only model must continue every row at the same position). If the model writes another
        `<asr_text>`, the text after the last one is returned. The repetition `guard` sees the prompt as part of
        the sequence (a decoder-only model's input_ids): the penalty also lowers the prompt's tokens (audio
        placeholders and chat markers, which a transcript never holds), and no n-gram of the prompt is repeated."""
        batch = self.build_inputs(processor, audio, None, padding_side="left", dtype=dtype, language=language)
        batch = {k: v.to(device) for k, v in batch.items()}
        with generation_autocast(device, autocast_dtype):
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                                       **guard)
        new_tokens = generated[:, batch["input_ids"].shape[1] :]  # (B, ≤ max_new_tokens)
        return [text.rsplit(ASR_TEXT, 1)[-1].strip()
                for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # --- parameter groups ------------------------------------------------------------------------------------

    def param_groups(self, config) -> dict[str, GroupDef]:
        """Named groups over native parameter names (REFERENCE.md, "Parameter paths")."""
        n_audio = config.audio_config.encoder_layers
        n_text = config.text_config.num_hidden_layers
        p = PEFT_PREFIX
        audio_layers = rf"{p}model\.audio_tower\.layers\.{{i}}\."
        llm_layers = rf"{p}model\.language_model\.layers\.{{i}}\."
        top = dict(requires="top")
        # fmt: off
        groups = [
            GroupDef("audio_frontend", rf"{p}model\.audio_tower\.(?:conv2d1|conv2d2|conv2d3|conv_out)\.",
                     "audio conv front end: 3 stride-2 convs and the linear after them"),
            GroupDef("audio_layers", audio_layers, "audio encoder layers (all, or top/bottom/layers)", n_audio),
            GroupDef("audio_top", audio_layers, "the last N audio encoder layers ({'top': N})", n_audio, **top),
            GroupDef("audio_norm", rf"{p}model\.audio_tower\.ln_post\.", "audio encoder final LayerNorm"),
            GroupDef("audio_tower", rf"{p}model\.audio_tower\.", "the whole audio encoder"),
            GroupDef("projector", rf"{p}model\.multi_modal_projector\.", "audio-to-LLM projector (2 linears)"),
            GroupDef("llm_layers", llm_layers, "LLM decoder layers (all, or top/bottom/layers)", n_text),
            GroupDef("llm_top", llm_layers, "the last N LLM decoder layers ({'top': N})", n_text, **top),
            GroupDef("llm_norm", rf"{p}model\.language_model\.norm\.", "LLM final RMSNorm"),
            GroupDef("embed_tokens", rf"{p}model\.language_model\.embed_tokens\.", "LLM input embeddings"),
            GroupDef("lm_head", rf"{p}lm_head\.", "LM head (the input embeddings when tied)", lm_head=True),
            GroupDef("language_model", rf"{p}model\.language_model\.", "the whole LLM (embeddings included)"),
            GroupDef("all", r".*", "every parameter (full fine-tune, as the official recipe)"),
        ]
        # fmt: on
        return {g.name: g for g in groups}

    def lora_target_regex(self, layers: list[int] | None = None) -> str:
        """Attention and MLP projections of the LLM only; a plain `q_proj` list would also hit the audio encoder."""
        return layer_regex(
            r"model\.language_model\.layers\.{i}\.(?:self_attn|mlp)\.(?:q|k|v|o|gate|up|down)_proj", layers
        )

    def audio_embedding_module(self, model: torch.nn.Module) -> torch.nn.Module:
        base = base_model(model)
        return base.model.multi_modal_projector

    def unpack_audio_embeddings(self, model, output, batch, frame_lens):
        """The projector's output is packed over the batch, (sum of clip tokens, H); each clip's share is the
        number of `<|audio_pad|>` placeholders in its prompt row (the model itself checks that the two agree)."""
        base = base_model(model)
        counts = (batch["input_ids"] == base.config.audio_token_id).sum(dim=1)  # (B,)
        rows = torch.split(output, counts.tolist())
        return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True), counts  # (B, T_a, H), (B,)


FAMILY = register(Qwen3ASRFamily())


def _pad_rows(rows: list[torch.Tensor], value, side: str) -> torch.Tensor:
    """Stack tensors that differ only in their last dimension, padding it with `value` on `side`."""
    width = max(r.shape[-1] for r in rows)
    pads = [(0, width - r.shape[-1]) if side == "right" else (width - r.shape[-1], 0) for r in rows]
    return torch.stack([torch.nn.functional.pad(r, pad, value=value) for r, pad in zip(rows, pads)])
