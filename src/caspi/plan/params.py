"""Exact parameter counts of a recipe's model, per unfreeze phase, from the model itself.

    plan = plan_model(recipe)          # the architecture on the meta device: no weights, nothing downloaded
    plan.total                         # every parameter of the base model (LoRA adapters not included)
    plan.dims                          # the sizes `caspi.plan.memory` needs (layers, widths, vocabulary, ...)
    for phase in plan.phases:          # one per `unfreeze.phases`
        phase.groups, phase.lora, phase.trainable

The counts come from the functions the trainer calls (`caspi.train.loop.TrainingRun._enter_phase`): the recipe's
LoRA applied with `apply_lora` as `caspi.models.loading.build_model` does, then `trainable_names` over the phase's
group specs and, with LoRA, `lora_substitute`. So the plan says what `caspi train` will set `requires_grad` on.

Where the architecture comes from (`model.init_from` never changes it: Round 2 keeps Round 1's shape):
- `model.tiny`: the family's tiny model, built for real (it is small). Its vocabulary is made from the training
  texts, which the plan does not read: it is counted with a placeholder vocabulary, and a note says so.
- a published hub id (`Qwen/Qwen3-ASR-1.7B-hf`, `-0.6B-hf`, their original-layout twins, `openai/whisper-large-v3`):
  the family's `reference_config`, built offline.
- a local folder: its config.json (the original qwen-asr layout is mapped as `caspi convert` maps it).
- any other hub id: its config from the local Hugging Face cache only; else a ConfigError saying what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from caspi.config import Recipe
from caspi.errors import CaspiError, ConfigError
from caspi.models.convert import native_config_dict, read_config
from caspi.models.families import ModelFamily, base_model, get_family, is_local_path
from caspi.models.unfreeze import apply_lora, lora_substitute, tied_lm_head, trainable_names

# Hub ids whose config the families build offline: id → (family, `reference_config` size).
REFERENCE_IDS: dict[str, tuple[str, str]] = {
    "Qwen/Qwen3-ASR-1.7B-hf": ("qwen3_asr", "1.7B"),
    "Qwen/Qwen3-ASR-1.7B": ("qwen3_asr", "1.7B"),
    "Qwen/Qwen3-ASR-0.6B-hf": ("qwen3_asr", "0.6B"),
    "Qwen/Qwen3-ASR-0.6B": ("qwen3_asr", "0.6B"),
    "openai/whisper-large-v3": ("whisper", "large-v3"),
}
# Texts for the tokenizer of a tiny model counted by the plan (the real run builds it from its training texts).
TINY_PLACEHOLDER_TEXTS = ["שלום עולם"]

# Where a parameter sits in the forward pass. The stacks are the audio encoder ("audio") and the text decoder
# ("llm"); per family the same two regexes cover Qwen3-ASR (audio_tower / language_model) and Whisper
# (encoder / decoder).
_LAYER = re.compile(r"(?:base_model\.model\.)?model\.(audio_tower|encoder|language_model|decoder)\.layers\.(\d+)\.")
_STACK = {"audio_tower": "audio", "encoder": "audio", "language_model": "llm", "decoder": "llm"}
_AUDIO_PRE = re.compile(r"(?:base_model\.model\.)?model\.(?:audio_tower\.(?:conv2d\d|conv_out)|encoder\.conv\d)\.")
_LLM_PRE = re.compile(r"(?:base_model\.model\.)?model\.(?:language_model|decoder)\.(?:embed_tokens|embed_positions)\.")
_AUDIO_POST = re.compile(r"(?:base_model\.model\.)?model\.(?:audio_tower\.ln_post|encoder\.layer_norm|"
                         r"multi_modal_projector|encoder\.embed_positions)\.")


@dataclass(frozen=True)
class ModelDims:
    """The sizes the memory model needs. "audio": the audio encoder; "llm": the text decoder (Qwen3 LLM, or
    Whisper's decoder)."""

    family: str
    audio_layers: int
    audio_d_model: int
    audio_ffn: int
    audio_heads: int
    audio_conv_channels: int  # channels of the conv front end (Qwen3-ASR downsample_hidden_size; Whisper d_model)
    num_mel_bins: int
    llm_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    audio_tokens_per_second: float  # tokens the encoder emits per second of audio (Qwen3-ASR 13, Whisper 50)
    audio_window_seconds: float | None  # every clip is padded to this window (Whisper 30 s); None: as long as it is
    mel_frames_per_second: int = 100  # hop 160 samples at 16 kHz
    chunk_frames: int = 100  # Qwen3-ASR's conv front end runs per chunk of n_window × 2 mel frames


@dataclass
class PhaseParams:
    """Trainable parameters of one unfreeze phase, as the trainer sets them."""

    name: str
    start_epoch: int
    groups: dict[str, int]  # group → trainable parameters (with LoRA: the group's adapters instead of its linears)
    lora: int  # trainable LoRA adapter parameters in this phase
    trainable: int  # all trainable parameters (the sum of `groups`)
    names: frozenset[str] = frozenset()  # the trainable parameter names (peft-prefixed with LoRA)
    # Trained in this phase or an earlier one: what the trainer keeps as float32 masters (`_float32_masters`
    # upcasts every parameter ever trained and never casts it back).
    trained_so_far: int = 0
    layers: dict[str, list[int]] = field(default_factory=dict)  # {"audio": [...], "llm": [...]} with trainable params
    # Trainable parameters outside the encoder/decoder layers (embeddings, LM head, projector, norms, conv front
    # end): what gradient checkpointing does not cover.
    outside_layers: int = 0
    # From which layer on each stack's activations must be kept for backward (None: none of them): a frozen layer
    # below the lowest trainable one sees inputs that need no gradient, so autograd records nothing there.
    grad_from: dict[str, int | None] = field(default_factory=dict)
    audio_frontend_trains: bool = False  # the conv front end is trained (its activations are kept then)


@dataclass
class ModelPlan:
    family: str
    source: str  # where the architecture came from, for people
    total: int  # parameters of the base model (without LoRA adapters)
    lora_total: int  # every LoRA adapter parameter the recipe creates (0 without LoRA), trainable or not
    dims: ModelDims
    phases: list[PhaseParams]
    notes: list[str] = field(default_factory=list)
    # Every parameter name → element count (peft-prefixed when LoRA is on): for the memory model's weights term.
    numel: dict[str, int] = field(default_factory=dict, repr=False)

    def phase(self, name: str) -> PhaseParams:
        return next(p for p in self.phases if p.name == name)


# ---------------------------------------------------------------------------------------------------------------
# The architecture


def model_config(recipe: Recipe) -> tuple[ModelFamily, object | None, str]:
    """(family, transformers config or None for a tiny model, source description) of the recipe's architecture."""
    m = recipe.model
    family = get_family(m.family)
    if m.tiny:
        return family, None, f"tiny-{m.tiny}"
    spec = m.name_or_path
    if spec in REFERENCE_IDS:
        fam, size = REFERENCE_IDS[spec]
        if fam != family.name:
            raise ConfigError(f"model.name_or_path: {spec!r} is a {fam} model, but model.family is {family.name}")
        return family, family.reference_config(size), f"{spec} (reference config {size}, built offline)"
    if is_local_path(spec):
        return family, _folder_config(Path(spec).expanduser()), f"{spec} (config.json)"
    return family, _cached_hub_config(spec, m.revision), f"{spec} (config from the local Hugging Face cache)"


def _folder_config(folder: Path):
    from transformers import AutoConfig, Qwen3ASRConfig

    if not folder.is_dir():
        raise ConfigError(f"model.name_or_path: local folder {str(folder)!r} does not exist")
    try:
        raw = read_config(folder)
        if "thinker_config" in raw:  # the original qwen-asr layout: mapped as `caspi convert` maps it
            settings, _ = native_config_dict(raw, source=str(folder / "config.json"))
            return Qwen3ASRConfig(**settings)
        return AutoConfig.from_pretrained(folder)
    except CaspiError as exc:
        raise ConfigError(f"model.name_or_path: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.name_or_path: {folder}/config.json: cannot build a config from it "
                          f"({type(exc).__name__}: {exc})") from None


def _cached_hub_config(repo_id: str, revision: str | None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(repo_id, revision=revision, local_files_only=True)
    except (OSError, ValueError) as exc:
        known = ", ".join(REFERENCE_IDS)
        raise ConfigError(
            f"model.name_or_path: {repo_id!r} is not a checkpoint the plan knows offline ({known}) and its "
            f"config.json is not in the local Hugging Face cache ({type(exc).__name__}); download it once "
            f"(`hf download {repo_id} config.json`) or give a local model folder"
        ) from None


def build_meta_model(recipe: Recipe) -> tuple[torch.nn.Module, str, list[str]]:
    """(model, source, notes): the recipe's architecture with its LoRA adapters, as `build_model` makes it, on the
    meta device (a tiny model on the CPU: it is built for real, by the family's own `tiny`)."""
    from transformers import AutoModelForSpeechSeq2Seq  # maps both families' configs to their model classes

    family, config, source = model_config(recipe)
    notes: list[str] = []
    if config is None:
        options = {"language": recipe.model.language} if family.name == "qwen3_asr" else {}
        model, processor = family.tiny(TINY_PLACEHOLDER_TEXTS, size=recipe.model.tiny, **options)
        notes.append(f"tiny model: its vocabulary is built from the training texts; counted here with a placeholder "
                     f"vocabulary of {len(processor.tokenizer)} tokens, so embedding counts are smaller than the "
                     "run's")
    else:
        with torch.device("meta"):
            model = AutoModelForSpeechSeq2Seq.from_config(config)
    if recipe.lora.enabled:
        # peft builds its adapters on the device of each wrapped layer, meta included (checked in
        # tests/plan/test_params.py), so the adapter counts are peft's own.
        lora = recipe.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_regex=lora.target_regex)
    return model, source, notes


def model_dims(model: torch.nn.Module, family: str) -> ModelDims:
    config = base_model(model).config
    if family == "qwen3_asr":
        a, t = config.audio_config, config.text_config
        return ModelDims(
            family=family, audio_layers=a.encoder_layers, audio_d_model=a.d_model, audio_ffn=a.encoder_ffn_dim,
            audio_heads=a.encoder_attention_heads, audio_conv_channels=a.downsample_hidden_size,
            num_mel_bins=a.num_mel_bins, llm_layers=t.num_hidden_layers, hidden=t.hidden_size,
            intermediate=t.intermediate_size, heads=t.num_attention_heads, kv_heads=t.num_key_value_heads,
            head_dim=t.head_dim or t.hidden_size // t.num_attention_heads, vocab=t.vocab_size,
            tied_embeddings=tied_lm_head(model),
            # 100 mel frames per chunk → three stride-2 convs → 13 tokens (REFERENCE.md, "Inputs": 1 s → 13)
            audio_tokens_per_second=13.0, audio_window_seconds=None, chunk_frames=2 * a.n_window)
    c = config  # Whisper: one conv of stride 2 → 1500 positions for the 30 s window, 50 per second
    return ModelDims(
        family=family, audio_layers=c.encoder_layers, audio_d_model=c.d_model, audio_ffn=c.encoder_ffn_dim,
        audio_heads=c.encoder_attention_heads, audio_conv_channels=c.d_model, num_mel_bins=c.num_mel_bins,
        llm_layers=c.decoder_layers, hidden=c.d_model, intermediate=c.decoder_ffn_dim,
        heads=c.decoder_attention_heads, kv_heads=c.decoder_attention_heads,
        head_dim=c.d_model // c.decoder_attention_heads, vocab=c.vocab_size, tied_embeddings=tied_lm_head(model),
        audio_tokens_per_second=50.0, audio_window_seconds=30.0, chunk_frames=2 * c.max_source_positions)


# ---------------------------------------------------------------------------------------------------------------
# Per phase


def phase_names(model: torch.nn.Module, recipe: Recipe, phase) -> dict[str, list[str]]:
    """`{group: [parameter names]}` the trainer trains in `phase` (`TrainingRun._enter_phase`, the same calls)."""
    names = trainable_names(model, recipe.phase_group_specs(phase))
    if recipe.lora.enabled:
        names = lora_substitute(model, names)
    return names


def where(name: str) -> tuple[str, int | None]:
    """(part of the forward pass, layer index or None) of a parameter name: ("audio", i), ("llm", i),
    ("audio_pre", None) the conv front end, ("audio_post", None) the encoder's final norm and the projector,
    ("llm_pre", None) the token embeddings and positions, ("llm_post", None) the final norm and the LM head."""
    m = _LAYER.match(name)
    if m:
        return _STACK[m.group(1)], int(m.group(2))
    for part, regex in (("audio_pre", _AUDIO_PRE), ("llm_pre", _LLM_PRE), ("audio_post", _AUDIO_POST)):
        if regex.match(name):
            return part, None
    return "llm_post", None


def _grad_from(parts: list[tuple[str, int | None]], dims: ModelDims) -> tuple[dict[str, int | None], bool]:
    """Where autograd starts recording in each stack (see `PhaseParams.grad_from`), and whether the conv front
    end trains. Forward order: audio_pre → audio layers → audio_post → (llm_pre joins) → llm layers → llm_post."""
    kinds = {p for p, _ in parts}
    frontend = "audio_pre" in kinds
    audio_layers = [i for p, i in parts if p == "audio"]
    audio = 0 if frontend else (min(audio_layers) if audio_layers else None)
    llm_layers = [i for p, i in parts if p == "llm"]
    # Anything trained before the decoder (the encoder, the projector, the embeddings) makes its input need a
    # gradient, so every decoder layer is recorded.
    upstream = frontend or audio is not None or "audio_post" in kinds or "llm_pre" in kinds
    llm = 0 if upstream else (min(llm_layers) if llm_layers else None)
    return {"audio": audio, "llm": llm}, frontend


def plan_model(recipe: Recipe) -> ModelPlan:
    """Total and per-phase trainable parameters of the recipe's model (see the module docstring)."""
    model, source, notes = build_meta_model(recipe)
    family = recipe.model.family
    dims = model_dims(model, family)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    lora_total = sum(v for n, v in numel.items() if ".lora_" in n)
    total = sum(numel.values()) - lora_total
    embed_name = next(n for n, p in model.named_parameters() if p is base_model(model).get_input_embeddings().weight)
    phases: list[PhaseParams] = []
    trained: set[str] = set()
    for phase in recipe.unfreeze.phases:
        names = phase_names(model, recipe, phase)
        flat = frozenset(n for group in names.values() for n in group)
        trained |= flat
        parts = [where(n) for n in flat]
        grad_from, frontend = _grad_from(parts, dims)
        layers = {stack: sorted({i for p, i in parts if p == stack}) for stack in ("audio", "llm")}
        phases.append(PhaseParams(
            name=phase.name, start_epoch=phase.start_epoch,
            groups={g: sum(numel[n] for n in group) for g, group in names.items()},
            lora=sum(numel[n] for n in flat if ".lora_" in n), trainable=sum(numel[n] for n in flat), names=flat,
            trained_so_far=sum(numel[n] for n in trained), layers=layers,
            outside_layers=sum(numel[n] for n, (p, _) in zip(flat, parts) if p not in ("audio", "llm")),
            grad_from=grad_from, audio_frontend_trains=frontend))
    tied = [p.name for p in phases if dims.tied_embeddings and embed_name in p.names]
    if tied:
        notes.append(
            f"WARNING {', '.join(repr(n) for n in tied)}: the LM head is tied to the input embeddings, so training "
            f"it trains the embeddings too: {numel[embed_name]:,} parameters ({numel[embed_name] / 1e6:.0f} M), "
            "with their float32 master, gradient and AdamW states; drop lm_head from the phase to save that memory")
    if recipe.lora.enabled:
        if any(p.lora < lora_total for p in phases):
            notes.append(f"LoRA adds {lora_total:,} adapter parameters on every targeted layer; a phase trains only "
                         f"the adapters of its groups' layers (lora_substitute), the rest stay at their zero init")
    return ModelPlan(family=family, source=source, total=total, lora_total=lora_total, dims=dims, phases=phases,
                     notes=notes, numel=numel)
