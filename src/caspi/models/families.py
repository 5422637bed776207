"""Model families: one object per architecture that knows how to load it, build a tiny copy, make its inputs and
labels, decode, and name its parameter groups.

    family = get_family("qwen3_asr")
    model, processor = family.load("Qwen/Qwen3-ASR-1.7B-hf", dtype=torch.bfloat16)
    batch = family.build_inputs(processor, audio, texts, dtype=model.dtype)   # training: has "labels"
    loss = model(**batch).loss
    hyps = family.decode(model, processor, audio)

The training loop, `plan` and `doctor` are meant to talk only to this interface, so that adding a family touches
`caspi.models` alone.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caspi.errors import CaspiError, CheckpointError, ConfigError, DataError

# A parameter name may carry peft's wrapper prefix once LoRA is applied; group regexes accept both forms.
PEFT_PREFIX = r"(?:base_model\.model\.)?"


@dataclass(frozen=True)
class GroupDef:
    """One named parameter group of a family.

    `pattern` is a regex matched (`re.match`) against full parameter names. A *layered* group's pattern holds
    `{i}` where the layer index goes; `num_layers` is how many layers the model's config has, so a spec such as
    `{"top": 8}` resolves to the last 8 indices. `lm_head` marks the output projection group.
    """

    name: str
    pattern: str
    description: str
    num_layers: int | None = None  # set for layered groups only
    lm_head: bool = False  # the output projection; resolves to the input embeddings when the two are tied
    requires: str | None = None  # an option the spec must give, e.g. "top" for `llm_top`

    @property
    def layered(self) -> bool:
        return self.num_layers is not None


def repetition_guard(no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0) -> dict[str, Any]:
    """`generate` options of the repetition guard: only those that are on, so that with both off generation keeps
    whatever the model's own generation_config says (a hub Whisper may set its own). Raises ConfigError for values
    `generate` would reject later, mid-eval."""
    if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0:
        raise ConfigError(f"no_repeat_ngram_size must be an integer >= 0 (0: off), got {no_repeat_ngram_size!r}")
    if not repetition_penalty > 0:
        raise ConfigError(f"repetition_penalty must be > 0 (1.0: off), got {repetition_penalty!r}")
    guard: dict[str, Any] = {}
    if no_repeat_ngram_size:
        guard["no_repeat_ngram_size"] = no_repeat_ngram_size
    if repetition_penalty != 1.0:
        guard["repetition_penalty"] = float(repetition_penalty)
    return guard


class ModelFamily(ABC):
    """The interface every family implements; see `caspi.models.qwen3_asr` and `caspi.models.whisper`."""

    name: str
    hub_ids: tuple[str, ...]  # the checkpoints Caspi is built and tested for
    model_types: tuple[str, ...]  # `config.model_type` values this family handles
    lora_layers_group: str  # the layered group whose layers `apply_lora(layers=...)` indexes
    # Longest clip in seconds the model takes (after speed perturbation), or None for no fixed window. The recipe
    # check (`data.max_duration` ÷ smallest speed factor) and the training dataset both hold clips to it.
    max_audio_seconds: float | None = None
    hop_length: int = 160  # samples per mel frame at 16 kHz (10 ms: both families' feature extractors)

    @abstractmethod
    def language_tag(self, language: str | None) -> str:
        """The recipe's `model.language` in the form this family's prompt takes (Qwen3-ASR: the tag in
        `language X<asr_text>`; Whisper: a language code such as `he`). None: the family's default, Hebrew.
        Raises `ConfigError` naming `model.language` when the family cannot express it."""

    @abstractmethod
    def load(
        self, name_or_path: str, revision: str | None = None, dtype: torch.dtype | str = torch.bfloat16
    ) -> tuple[torch.nn.Module, Any]:
        """Load `(model, processor)` from a hub id or a local folder with `from_pretrained`."""

    @abstractmethod
    def tiny(self, vocab_texts: list[str], seed: int = 0, size: str = "xs", **options) -> tuple[torch.nn.Module, Any]:
        """A randomly initialised model of the real architecture at toy size, with a tokenizer built offline."""

    @abstractmethod
    def reference_config(self, size: str):
        """The config of a published checkpoint, built offline (for `plan` on the meta device)."""

    @abstractmethod
    def build_inputs(
        self,
        processor,
        audio: list[np.ndarray],
        texts: list[str] | None = None,
        padding_side: str = "right",
        dtype: torch.dtype | None = None,
        language: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of 16 kHz clips; with `texts`, also `labels` (-100 where there is no loss).
        `language`: the recipe's `model.language` (see `language_tag`); None: Hebrew."""

    def decode(
        self,
        model,
        processor,
        audio: list[np.ndarray],
        max_new_tokens: int = 128,
        batch_size: int = 16,
        autocast_dtype: torch.dtype | None = None,
        num_beams: int = 1,
        language: str | None = None,
        no_repeat_ngram_size: int = 0,
        repetition_penalty: float = 1.0,
    ) -> list[str]:
        """Transcription of each clip, in batches of `batch_size`: greedy, or beam search with `num_beams` > 1.
        `autocast_dtype`: run generation under autocast (a model being trained holds float32 master copies next to
        bf16 weights); feature extraction stays outside it. `language`: as in `build_inputs`. The repetition guard
        (`generate`'s options of the same names; see `repetition_guard`): `no_repeat_ngram_size` > 0 bans any
        token n-gram of that size from appearing twice, `repetition_penalty` > 1 lowers the logits of tokens already
        in the sequence; 0 and 1.0 (the defaults) leave generation exactly as without them. The model runs in eval
        mode and gets its own mode back afterwards, also when generation fails (an in-training eval that raised
        must not leave dropout and checkpointing off)."""
        was_training = model.training
        model.eval()
        first = next(model.parameters())
        guard = repetition_guard(no_repeat_ngram_size, repetition_penalty)
        hyps: list[str] = []
        try:
            for start in range(0, len(audio), batch_size):
                hyps += self._decode_batch(model, processor, audio[start : start + batch_size], device=first.device,
                                           dtype=first.dtype, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                           autocast_dtype=autocast_dtype, language=language, guard=guard)
        finally:
            model.train(was_training)
        return hyps

    @abstractmethod
    def _decode_batch(self, model, processor, audio: list[np.ndarray], *, device: torch.device, dtype: torch.dtype,
                      max_new_tokens: int, num_beams: int, autocast_dtype: torch.dtype | None,
                      language: str | None, guard: dict[str, Any]) -> list[str]:
        """One batch of `decode` (the model already in eval mode): features → generate (with the `guard` options)
        → the texts."""

    @abstractmethod
    def param_groups(self, config) -> dict[str, GroupDef]:
        """The named parameter groups of a model with this config (see `caspi.models.unfreeze`)."""

    @abstractmethod
    def lora_target_regex(self, layers: list[int] | None = None) -> str:
        """A peft `target_modules` regex restricted to the language decoder (optionally to some of its layers)."""

    def frame_lengths(self, inputs: dict[str, torch.Tensor], audio_lens: torch.Tensor) -> torch.Tensor:
        """(B,) mel frames of real audio per clip of a `build_inputs` batch (`input_features` (B, n_mels, T)), from
        the clips' lengths in samples (B,): the frames SpecAugment may mask and the CTC loss aligns."""
        hop = self.hop_length
        return torch.clamp((audio_lens + hop - 1) // hop, max=inputs["input_features"].shape[-1])

    def enable_gradient_checkpointing(self, model: torch.nn.Module) -> None:
        """Recompute activations in backward instead of keeping them (non-reentrant, so frozen inputs and LoRA
        work), and switch off the KV cache, which checkpointing cannot keep. Takes effect in training mode only."""
        base = base_model(model)
        if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5.x name; the old one warns
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers also hooks every input embedding (Qwen3-ASR's audio conv2d1 included) to make its output
        # require grad, which reentrant checkpointing needs and non-reentrant does not: left on, autograd records
        # and back-propagates through every frozen layer, e.g. the whole audio tower in a phase that trains none.
        if hasattr(base, "disable_input_require_grads"):
            base.disable_input_require_grads()
        base.config.use_cache = False

    # --- the audio embeddings the text decoder sees (for the auxiliary CTC loss, `caspi.models.ctc`) ----------

    def audio_embedding_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose forward output holds the audio embeddings fed to the text decoder."""
        raise ConfigError(f"model family {self.name!r} has no auxiliary CTC support; set train.ctc_aux_weight=0")

    def unpack_audio_embeddings(
        self, model: torch.nn.Module, output: Any, batch: dict[str, torch.Tensor], frame_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """That module's output → (embeddings (B, T_a, H) zero-padded, lengths (B,)). `frame_lens`: mel frames."""
        raise ConfigError(f"model family {self.name!r} has no auxiliary CTC support; set train.ctc_aux_weight=0")


# Filled by `register` when `caspi.models` (the package) imports qwen3_asr and whisper; Python runs the package's
# __init__ before any of its modules, so the registry is complete before anything can look a family up.
_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry under `family.name`."""
    _FAMILIES[family.name] = family
    return family


def family_names() -> list[str]:
    """Names accepted by `get_family`."""
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family registered as `name` ("qwen3_asr" or "whisper"); a ConfigError lists the known names."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; known families: {', '.join(sorted(_FAMILIES))}") from None


def family_of(model: torch.nn.Module) -> ModelFamily:
    """The family of a model instance (peft-wrapped or not), from its config's `model_type`."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ConfigError(f"no Caspi model family handles model_type {model_type!r} ({type(model).__name__})")


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the families


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_audio_batch(audio: list[np.ndarray], texts: list[str] | None) -> None:
    """Reject what the processors would accept silently or fail on obscurely: non-1-D, empty, non-finite clips,
    and a text list of the wrong length. Indices in messages are positions in the batch."""
    if len(audio) == 0:
        raise DataError("build_inputs: the audio batch is empty")
    for i, clip in enumerate(audio):
        arr = np.asarray(clip)
        if arr.ndim != 1:
            raise DataError(f"build_inputs: clip {i} has shape {arr.shape}; expected mono samples (T,) at 16 kHz")
        if arr.size == 0:
            raise DataError(f"build_inputs: clip {i} is empty")
        if not np.isfinite(arr).all():
            raise DataError(f"build_inputs: clip {i} holds NaN or inf samples")
    if texts is not None and len(texts) != len(audio):
        raise DataError(f"build_inputs: {len(texts)} texts for {len(audio)} clips; they must pair one to one")


def check_padding_side(padding_side: str) -> None:
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")


def from_pretrained_or_raise(loader, family: str, name_or_path: str, revision: str | None, **kwargs):
    """Call `loader(name_or_path, revision=..., **kwargs)` and turn hub, network and missing-file failures into a
    CheckpointError that names the id, so a user sees one line rather than a requests traceback."""
    looks_local = is_local_path(name_or_path)
    if looks_local and not Path(name_or_path).exists():
        raise CheckpointError(f"{family}: local model folder {name_or_path!r} does not exist")
    try:
        return loader(name_or_path, revision=revision, **kwargs)
    except CaspiError:
        raise
    except (OSError, ValueError, KeyError, ImportError) as exc:
        # OSError covers huggingface_hub's connection, 404 and gated-repo errors and missing local files.
        where = "local folder" if looks_local else "hub id"
        hint = (
            "it must hold config.json, the weights and the processor files (every Caspi checkpoint does)"
            if looks_local
            else "a hub id needs network access, or the files already cached with HF_HUB_OFFLINE=1"
        )
        rev = f" at revision {revision!r}" if revision else ""
        raise CheckpointError(
            f"{family}: cannot load {where} {name_or_path!r}{rev}: {type(exc).__name__}: {first_line(exc)}; {hint}"
        ) from exc


def is_local_path(name_or_path: str) -> bool:
    """Whether `name_or_path` is meant as a local folder rather than a hub id."""
    # A hub id is "name" or "org/name"; anything else (absolute, ./, ~, or two slashes) is meant as a folder.
    return Path(name_or_path).exists() or name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def layer_regex(pattern: str, layers: list[int] | None) -> str:
    """Fill a layered pattern's `{i}` with an alternation of the given indices (any index when None)."""
    index = r"\d+" if layers is None else "(?:" + "|".join(str(i) for i in sorted(layers)) + ")"
    return pattern.replace("{i}", index)


def generation_autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast for `generate` when `dtype` is given, else a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
