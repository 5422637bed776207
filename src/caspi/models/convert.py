"""Qwen3-ASR checkpoints that transformers 5.x cannot load as they are, converted to its native layout.

    detect_layout("r1/")                    # "native" | "original" | "trainer-checkpoint"
    convert("r1/", "r1-hf/")                # `caspi convert`: a native folder that from_pretrained loads
    convert("out/checkpoint-800", "r1-hf/", processor_from="Qwen/Qwen3-ASR-1.7B-hf")
    folder = ensure_native("r1/")           # what loading does: converted once into a cache, keyed by content

Two forms reach users (REFERENCE.md, "Fine-tunes in the original layout"):

- the **original layout** that the official `qwen-asr` SFT script saves (most community fine-tunes, seed 001's
  Round 1): config.json nests everything under `thinker_config`, tensors are named `thinker.*`, and the projector
  sits inside the audio tower as `proj1`/`proj2`. transformers 5.x reads such a config without complaint and builds a
  default-sized model, so it must never be loaded as is;
- **HF Trainer `checkpoint-N/` folders** (trainer_state.json, optimizer and scheduler files beside the weights),
  in either tensor layout, often without the feature extractor's file (`preprocessor_config.json`): the SFT script
  copies the processor files from the base model only when that is a local folder (Qwen3-ASR issues #47, #104).

The conversion renames tensors, flattens the config, writes the generation config and the processor, and checks the
result with a strict `load_state_dict` into the installed `Qwen3ASRForConditionalGeneration` (built on the meta
device, so no memory is spent on random weights): a missing, unexpected or mis-shaped tensor is a CheckpointError,
never a silently initialised one. Missing processor files come from `processor_from` (a hub id or folder) or are an
error naming the files; no default processor is ever made up. Only safetensors weights are read: a `.bin` pickle can
run code when opened, and the optimizer, scheduler and RNG pickles of a trainer folder are never opened.

The content hasher (`folder_sha256`, `files_sha256`) lives here too, so that this module (layer 1) and
`caspi.models.loading` (above config) share one definition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import torch

from caspi import __version__
from caspi.errors import CheckpointError, ConfigError
from caspi.folders import check_output_folder, fsync_tree
from caspi.models.families import first_line, is_local_path

Layout = Literal["native", "original", "trainer-checkpoint"]

CONVERSION_MARKER = "caspi_conversion.json"  # in every converted folder: what a later conversion may replace
# Part of the cache key and the marker: bump it when the conversion's output changes for the same input.
CONVERTER_VERSION = 1
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What an HF Trainer writes beside the model in `checkpoint-N/` (the pickles are never opened here).
TRAINER_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "training_args.bin")

# Processor files, by the part they make up. A part is complete when one of its alternatives is all there.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json")
FEATURE_EXTRACTOR_FILES = ("preprocessor_config.json", "processor_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
PROCESSOR_FILES = TOKENIZER_FILES + FEATURE_EXTRACTOR_FILES + CHAT_TEMPLATE_FILES

# Tensor names, original → native, as transformers' converter at commit f4410762 maps them (REFERENCE.md), written
# as anchored prefixes tried in order: the projector's two linears leave the audio tower first. Checked against the
# installed modeling code (transformers 5.24.0, `Qwen3ASRForConditionalGeneration`): on the tiny model of the tests
# every tensor lands with a strict `load_state_dict` (no missing, no unexpected keys), and `_strict_load` repeats that
# check on every conversion.
TENSOR_PREFIXES = (
    ("thinker.audio_tower.proj1.", "model.multi_modal_projector.linear_1."),
    ("thinker.audio_tower.proj2.", "model.multi_modal_projector.linear_2."),
    ("thinker.audio_tower.", "model.audio_tower."),
    ("thinker.model.", "model.language_model."),
    ("thinker.lm_head.", "lm_head."),
)
EMBED = "model.language_model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"

# Keys that transformers 4.x wrote into every sub-config whether the model used them or not (its PretrainedConfig
# attributes); dropping them loses nothing, so the report does not list them.
AUTO_CONFIG_KEYS = frozenset({
    "_name_or_path", "add_cross_attention", "architectures", "bad_words_ids", "begin_suppress_tokens", "bos_token_id",
    "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty",
    "do_sample", "dtype", "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id",
    "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label",
    "is_decoder", "is_encoder_decoder", "label2id", "length_penalty", "max_length", "min_length", "model_type",
    "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions",
    "output_hidden_states", "output_scores", "pad_token_id", "prefix", "problem_type", "pruned_heads",
    "remove_invalid_values", "repetition_penalty", "return_dict", "return_dict_in_generate", "sep_token_id",
    "suppress_tokens", "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder",
    "tie_word_embeddings", "tokenizer_class", "top_k", "top_p", "torch_dtype", "torchscript", "transformers_version",
    "typical_p", "use_bfloat16",
})
# M-RoPE settings of the original text config, inherited from Qwen3-Omni. A prompt of audio and text has no image
# grid: its three position ids are equal at every token, so the three sections rotate alike and M-RoPE is plain
# RoPE, which is what the native port uses (transformers' converter strips these keys too).
MROPE_KEYS = ("mrope_section", "interleaved", "mrope_interleaved", "type")
# The native encoder counts 13 audio tokens per 100-frame chunk (`_get_feat_extract_output_lengths`), i.e. n_window 50.
NATIVE_N_WINDOW = 50

# The generation config of the converted hub repos (REFERENCE.md): stop at either end token, pad with <|im_end|>,
# greedy. The ids are looked up in the checkpoint's own tokenizer.
END_OF_TEXT, IM_END = "<|endoftext|>", "<|im_end|>"
# The processor's three audio tokens, as the tokenizer must name them (`Qwen3ASRProcessor.__init__` reads them).
AUDIO_TOKENS = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                "audio_eos_token": "<|audio_end|>"}

_HASH_BLOCK = 1 << 20  # bytes read at a time: multi-GB weight files are streamed, never held in memory


# ---------------------------------------------------------------------------------------------------------------
# Content hashes


def files_sha256(folder: str | Path, files: Iterable[Path]) -> str:
    """sha256 over each file's path relative to `folder`, size and bytes, in path order."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: str | Path, pattern: str = "*") -> str:
    """Content hash of a local model folder: `files_sha256` over the files matching `pattern` (recursive). Hidden
    files and folders (.git, .cache) and Markdown files are left out: they do not change the model."""
    folder = Path(folder)
    files = [
        p for p in folder.rglob(pattern)
        if p.is_file() and p.suffix != ".md" and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return files_sha256(folder, files)


# ---------------------------------------------------------------------------------------------------------------
# What a folder is


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of `folder` as a dict; CheckpointError naming the file when it is missing or not JSON."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; a model folder needs one")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def is_trainer_checkpoint(folder: Path) -> bool:
    """Whether `folder` is an HF Trainer `checkpoint-N/` (its trainer state or optimizer files beside the model)."""
    return any((folder / name).is_file() for name in TRAINER_FILES)


def detect_layout(folder: str | Path) -> Layout:
    """"trainer-checkpoint" for an HF Trainer `checkpoint-N/` folder (its tensors in either layout), "original" for
    the `qwen-asr` layout (config.json with a nested `thinker_config`), else "native". Reads config.json only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (it does not exist or is a file)")
    config = read_config(folder)
    if is_trainer_checkpoint(folder):
        return "trainer-checkpoint"
    return "original" if "thinker_config" in config else "native"


def needs_conversion(folder: str | Path) -> bool:
    """Whether `folder` is a Qwen3-ASR checkpoint that transformers 5.x cannot load as it is: the original layout,
    or a trainer folder (whose processor files and tensor layout are not to be trusted). Other models' folders,
    trainer ones included, are not this module's business: they load as they are or fail there."""
    folder = Path(folder)
    layout = detect_layout(folder)
    if layout == "native":
        return False
    config = read_config(folder)
    return "thinker_config" in config or config.get("model_type") == "qwen3_asr"


# ---------------------------------------------------------------------------------------------------------------
# The plan: which files a conversion reads (validated before anything is written or hashed)


@dataclass
class ProcessorParts:
    """Where each part of the processor comes from: a folder per part (the source or `processor_from`)."""

    tokenizer: Path
    feature_extractor: Path
    chat_template: Path | None  # None: neither folder has one (Caspi's prompts carry their own template)


@dataclass
class Plan:
    """What converting `src` reads: its config, its safetensors files and the processor's folders."""

    src: Path
    layout: Layout
    config: dict[str, Any]
    weight_files: list[Path]
    index: Path | None
    processor: ProcessorParts
    processor_from: str | None

    def read_files(self) -> list[tuple[Path, Path]]:
        """(folder, file) for every file the conversion reads: what the cache key hashes."""
        files = [(self.src, self.src / CONFIG_FILE)] + [(self.src, p) for p in self.weight_files]
        if self.index is not None:
            files.append((self.src, self.index))
        folders = {self.processor.tokenizer, self.processor.feature_extractor}
        if self.processor.chat_template is not None:
            folders.add(self.processor.chat_template)
        for folder in sorted(folders):
            files += [(folder, folder / name) for name in PROCESSOR_FILES if (folder / name).is_file()]
        return files


def weight_files(folder: Path) -> tuple[list[Path], Path | None]:
    """(safetensors files, index or None) of a model folder. A sharded checkpoint's index must name files that are
    all there; pickled (.bin) weights and LoRA adapters are refused with what to do instead."""
    if any((folder / name).is_file() for name in ADAPTER_FILES):
        raise CheckpointError(
            f"{folder}: a LoRA adapter checkpoint ({ADAPTER_FILES[0]}), not a full model; merge the adapters into "
            "their base (peft's merge_and_unload, then save_pretrained) and convert that"
        )
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({type(exc).__name__}: "
                                  f"{exc})") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: {SAFETENSORS_INDEX} names shards that are not there: "
                                  f"{', '.join(missing)}; the download or copy is incomplete")
        return [folder / name for name in shards], index
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE], None
    if any((folder / name).is_file() for name in PICKLED_WEIGHTS):
        raise CheckpointError(
            f"{folder}: the weights are a pickle ({PICKLED_WEIGHTS[0]}), which can run code when opened; Caspi reads "
            "safetensors only. Re-save the model with save_pretrained(..., safe_serialization=True) where you trust "
            "the file, then convert that"
        )
    raise CheckpointError(f"{folder}: no weights ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX})")


def _tokenizer_complete(folder: Path) -> bool:
    has = lambda name: (folder / name).is_file()  # noqa: E731
    return has("tokenizer_config.json") and (has("tokenizer.json") or (has("vocab.json") and has("merges.txt")))


def _feature_extractor_config(folder: Path) -> dict[str, Any] | None:
    """The feature extractor's settings in `folder`: preprocessor_config.json (the original repos, transformers 4.x)
    or the `feature_extractor` entry of processor_config.json (transformers 5.x); None when neither holds them."""
    for name in FEATURE_EXTRACTOR_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
        if name == "processor_config.json":
            data = data.get("feature_extractor") if isinstance(data, dict) else None
        if isinstance(data, dict):
            return data
    return None


def _chat_template_present(folder: Path) -> bool:
    return any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES)


def resolve_processor_source(processor_from: str | Path) -> Path:
    """A local folder holding the processor files of `processor_from`: the folder itself, or a hub id's processor
    files fetched into (or found in) the local hub cache. CheckpointError naming it when neither works."""
    text = str(processor_from)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if is_local_path(text):
        raise CheckpointError(f"processor_from: {text!r} is not a folder (and not a hub id)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=list(PROCESSOR_FILES)))
    except Exception as exc:  # noqa: BLE001 - hub HTTP, connection, validation and offline-cache errors alike
        raise CheckpointError(
            f"processor_from: cannot fetch the processor files of hub id {text!r} ({type(exc).__name__}: "
            f"{first_line(exc)}); it needs network access, or the files already in the hub cache with "
            "HF_HUB_OFFLINE=1, or give a local folder"
        ) from None


def plan_processor(src: Path, processor_from: str | Path | None) -> ProcessorParts:
    """Each processor part from `src` when it is complete there, else from `processor_from`. CheckpointError naming
    the missing files, and the option that supplies them, when neither has a part; never a default processor."""
    fallback: list[Path] = []  # `processor_from` resolved on first need: a hub id is fetched only when used

    def pick(complete) -> Path | None:
        if complete(src):
            return src
        if processor_from is None:
            return None
        if not fallback:
            fallback.append(resolve_processor_source(processor_from))
        return fallback[0] if complete(fallback[0]) else None

    tokenizer = pick(_tokenizer_complete)
    features = pick(lambda folder: _feature_extractor_config(folder) is not None)
    missing = []
    if tokenizer is None:
        missing.append("tokenizer_config.json with tokenizer.json (or vocab.json + merges.txt)")
    if features is None:
        missing.append("preprocessor_config.json (or processor_config.json with a feature_extractor)")
    if missing:
        where = (f"neither {src} nor processor_from {str(processor_from)!r} holds" if processor_from is not None
                 else f"{src} lacks")
        raise CheckpointError(
            f"{where} the processor files: {'; '.join(missing)}. Trainer checkpoints of a run started from a hub id "
            "lack them (Qwen3-ASR issues #47, #104). Say where they are: `caspi convert "
            f"{src} --out DST --processor-from Qwen/Qwen3-ASR-1.7B-hf` (or -0.6B-hf, or the base model's folder), or "
            "processor_from= in Python"
        )
    template = pick(_chat_template_present)
    return ProcessorParts(tokenizer=tokenizer, feature_extractor=features, chat_template=template)


def plan_conversion(src: str | Path, processor_from: str | Path | None = None) -> Plan:
    """Check that `src` is a Qwen3-ASR checkpoint Caspi can convert and find every file the conversion reads."""
    src = Path(src)
    layout = detect_layout(src)
    config = read_config(src)
    if "thinker_config" not in config and config.get("model_type") != "qwen3_asr":
        raise CheckpointError(
            f"{src / CONFIG_FILE}: model_type {config.get('model_type')!r}; Caspi converts Qwen3-ASR checkpoints "
            "only (model_type 'qwen3_asr'); other models' folders load as they are"
        )
    thinker = config.get("thinker_config")
    if isinstance(thinker, dict) and thinker.get("classify_num") is not None:
        raise CheckpointError(f"{src}: a Qwen3-ForcedAligner checkpoint (thinker_config.classify_num); Caspi converts "
                              "the ASR model only")
    if layout == "native":
        raise CheckpointError(f"{src}: already in the native layout (no thinker_config, no trainer files); "
                              "from_pretrained loads it as it is, nothing to convert")
    files, index = weight_files(src)
    return Plan(src=src, layout=layout, config=config, weight_files=files, index=index,
                processor=plan_processor(src, processor_from),
                processor_from=None if processor_from is None else str(processor_from))


def plan_sha256(plan: Plan) -> str:
    """Content hash of everything a conversion reads (source config, weights, the processor's files) and of the
    converter's version: equal hashes, equal converted folders."""
    digest = hashlib.sha256(f"caspi-convert-{CONVERTER_VERSION}\0".encode())
    by_folder: dict[Path, list[Path]] = {}
    for folder, path in plan.read_files():
        by_folder.setdefault(folder, []).append(path)
    for folder in sorted(by_folder):
        digest.update(files_sha256(folder, by_folder[folder]).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Config and tensors, original → native (pure functions)


def _own_fields(config_class) -> set[str]:
    """The settings a transformers config class defines itself (not those every config inherits)."""
    from transformers import PreTrainedConfig

    inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return {f.name for f in dataclasses.fields(config_class)} - inherited


def _keep(sub: dict[str, Any], allowed: set[str], where: str, dropped: list[str]) -> dict[str, Any]:
    """The entries of `sub` named in `allowed`; the others are recorded in `dropped` (as `where.key`) unless they
    are transformers 4.x's auto-populated attributes."""
    kept = {}
    for key, value in sub.items():
        if key in allowed:
            kept[key] = value
        elif key not in AUTO_CONFIG_KEYS:
            dropped.append(f"{where}.{key}")
    return kept


def native_config_dict(original: dict[str, Any], source: str = CONFIG_FILE) -> tuple[dict[str, Any], list[str]]:
    """(native Qwen3ASRConfig settings, dropped keys) from an original-layout config.json.

    `thinker_config`'s `audio_config`, `text_config`, `audio_token_id` and `initializer_range` move to the top
    (REFERENCE.md); each sub-config keeps the settings its native class defines; the text config's legacy
    `rope_scaling` + `rope_theta` become `rope_parameters` without the M-RoPE keys. Dropped: `support_languages`,
    the other thinker keys (audio start/end and user token ids: the processor knows them), the encoder's
    `max_source_positions` (positions restart in every 100-frame chunk) and `conv_chunksize` (a memory knob), and
    transformers 4.x's auto-populated keys (not listed in the result). Token ids, the tie of the LM head and the
    dtype are set by `convert` from the tokenizer and the tensors."""
    from transformers import Qwen3Config
    from transformers.models.qwen3_asr.configuration_qwen3_asr import Qwen3ASREncoderConfig

    thinker = original.get("thinker_config")
    if not isinstance(thinker, dict):
        raise CheckpointError(f"{source}: thinker_config is not an object")
    dropped = [key for key in original if key not in AUTO_CONFIG_KEYS and key != "thinker_config"]
    for name in ("audio_config", "text_config"):
        if not isinstance(thinker.get(name), dict):
            raise CheckpointError(f"{source}: thinker_config.{name} is missing or not an object")

    audio = _keep(thinker["audio_config"], _own_fields(Qwen3ASREncoderConfig), "thinker_config.audio_config",
                  dropped)
    n_window = audio.get("n_window", NATIVE_N_WINDOW)
    if n_window != NATIVE_N_WINDOW:
        raise CheckpointError(
            f"{source}: thinker_config.audio_config.n_window is {n_window}; transformers' native Qwen3-ASR encoder "
            f"works on {2 * NATIVE_N_WINDOW}-frame chunks (n_window {NATIVE_N_WINDOW}) only, so this checkpoint "
            "cannot be converted"
        )
    audio["model_type"] = "qwen3_asr_encoder"

    text_in = dict(thinker["text_config"])
    rope = dict(text_in.get("rope_parameters") or text_in.get("rope_scaling") or {})
    legacy_type = rope.get("type")
    for key in MROPE_KEYS:
        rope.pop(key, None)
    rope.setdefault("rope_type", legacy_type or "default")
    if rope["rope_type"] == "mrope":  # a legacy name of the same rotation (see MROPE_KEYS)
        rope["rope_type"] = "default"
    if "rope_theta" in text_in:
        rope["rope_theta"] = text_in["rope_theta"]
    for key in ("rope_scaling", "rope_parameters", "rope_theta"):
        text_in.pop(key, None)
    text = _keep(text_in, _own_fields(Qwen3Config), "thinker_config.text_config", dropped)
    if rope.get("rope_theta") is not None or rope["rope_type"] != "default":
        text["rope_parameters"] = rope  # else the native default, as the original had none either
    text["model_type"] = "qwen3"

    native = {"audio_config": audio, "text_config": text}
    for key in ("audio_token_id", "initializer_range"):
        if key in thinker:
            native[key] = thinker[key]
    if "audio_token_id" not in native:
        raise CheckpointError(f"{source}: thinker_config.audio_token_id is missing")
    dropped += [f"thinker_config.{key}" for key in thinker
                if key not in ("audio_config", "text_config", "audio_token_id", "initializer_range")
                and key not in AUTO_CONFIG_KEYS]
    return native, dropped


def native_tensor_name(name: str) -> str | None:
    """The native name of an original-layout tensor, or None when `name` is not one (see TENSOR_PREFIXES)."""
    for old, new in TENSOR_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return None


def original_tensor_name(name: str) -> str | None:
    """The inverse of `native_tensor_name` (for writing test fixtures in the original layout)."""
    for old, new in TENSOR_PREFIXES:
        if name.startswith(new):
            return old + name[len(new):]
    return None


def read_tensors(plan: Plan) -> dict[str, torch.Tensor]:
    """Every tensor of the plan's safetensors files; CheckpointError naming the file that cannot be read, or the
    tensors an index promises and its shards lack."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for path in plan.weight_files:
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... for truncated or damaged files
            raise CheckpointError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc}); the file is "
                                  "damaged or incomplete") from None
    if plan.index is not None:
        promised = set(json.loads(plan.index.read_text(encoding="utf-8"))["weight_map"])
        lacking = sorted(promised - set(tensors))
        if lacking:
            raise CheckpointError(f"{plan.index}: {len(lacking)} tensors it lists are in no shard (e.g. "
                                  f"{', '.join(lacking[:3])})")
    return tensors


def native_tensors(tensors: dict[str, torch.Tensor], original: bool, source: str) -> dict[str, torch.Tensor]:
    """The tensors under their native names (`original`: renamed by TENSOR_PREFIXES; else checked to be native)."""
    thinker = [name for name in tensors if name.startswith("thinker.")]
    if original:
        stray = sorted(name for name in tensors if native_tensor_name(name) is None)
        if stray:
            raise CheckpointError(
                f"{source}: the config is in the original layout (thinker_config) but {len(stray)} of "
                f"{len(tensors)} tensors are not original-layout thinker.audio_tower/model/lm_head tensors (e.g. "
                f"{', '.join(stray[:3])}); the folder mixes layouts and cannot be converted"
            )
        return {native_tensor_name(name): tensor for name, tensor in tensors.items()}
    if thinker:
        raise CheckpointError(f"{source}: the config is in the native layout but {len(thinker)} tensors are named "
                              f"thinker.* (e.g. {thinker[0]}); the folder mixes layouts and cannot be converted")
    return dict(tensors)


# ---------------------------------------------------------------------------------------------------------------
# Converting


@dataclass
class ConversionReport:
    """What `convert` did: from which layout, how many tensors, which config keys it dropped, where the processor
    came from, and the generation ids it wrote."""

    source: Path
    out: Path
    layout: Layout
    tensors_layout: str  # "original" or "native": the names of the source's tensors
    tensors: int
    renamed: int
    tied_lm_head: bool
    dtype: str
    dropped_config_keys: list[str] = field(default_factory=list)
    processor: dict[str, str | None] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # plan_sha256 of what was read

    def summary(self) -> str:
        lines = [
            f"converted {self.source} ({self.layout}, tensors in the {self.tensors_layout} layout) to {self.out}",
            f"  tensors: {self.tensors} ({self.renamed} renamed), {self.dtype}, LM head "
            f"{'tied to' if self.tied_lm_head else 'separate from'} the embeddings",
            f"  processor: tokenizer from {self.processor.get('tokenizer')}, feature extractor from "
            f"{self.processor.get('feature_extractor')}, chat template from "
            f"{self.processor.get('chat_template') or 'nowhere (none in either folder)'}",
            f"  generation: eos {self.generation.get('eos_token_id')}, pad {self.generation.get('pad_token_id')}, "
            "greedy",
        ]
        if self.dropped_config_keys:
            lines.append(f"  config keys dropped: {', '.join(self.dropped_config_keys)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["source"], out["out"] = str(self.source), str(self.out)
        return out


def _strict_load(config, tensors: dict[str, torch.Tensor], source: str):
    """The native model built on the meta device with `tensors` assigned under a strict load: every parameter and
    persistent buffer present, nothing left over, every shape right (CheckpointError otherwise)."""
    from transformers import Qwen3ASRForConditionalGeneration

    with torch.device("meta"):
        model = Qwen3ASRForConditionalGeneration(config)
    expected = model.state_dict()
    # Non-persistent buffers (sinusoid positions, RoPE frequencies) are recomputed by the model; a checkpoint that
    # saved them anyway has nothing to give.
    buffers = {name for name, _ in model.named_buffers()} - set(expected)
    tensors = {name: t for name, t in tensors.items() if name not in buffers}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(n for n in set(expected) & set(tensors) if tuple(expected[n].shape) != tuple(tensors[n].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            n = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {n}: {tuple(tensors[n].shape)}, config says "
                         f"{tuple(expected[n].shape)})")
        raise CheckpointError(f"{source}: the tensors do not fit the model its config describes: {'; '.join(parts)}")
    model.load_state_dict(tensors, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()  # assign=True gave the head its own (equal) tensor; make it the embeddings again
    return model


def _load_tokenizer(folder: Path):
    """The tokenizer of `folder` (its tokenizer files copied alone into a temp folder, so that no config.json
    beside them is consulted), with the three audio tokens named as the processor needs. Those names are taken from
    the tokenizer's own vocabulary when its config lacks them; a vocabulary without the tokens is an error."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="caspi-tokenizer-") as staging:
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, Path(staging) / name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(staging)
            if not all(getattr(tokenizer, attr, None) for attr in AUDIO_TOKENS):
                vocab = tokenizer.get_vocab()
                absent = [token for token in AUDIO_TOKENS.values() if token not in vocab]
                if absent:
                    raise CheckpointError(f"{folder}: the tokenizer has no {', '.join(absent)}; it is not a "
                                          "Qwen3-ASR tokenizer")
                tokenizer = AutoTokenizer.from_pretrained(staging, extra_special_tokens=dict(AUDIO_TOKENS))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - tokenizers and transformers raise many kinds for bad files
            raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    return tokenizer


def _load_chat_template(folder: Path | None) -> str | None:
    if folder is None:
        return None
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    path = folder / "chat_template.json"
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    return template if isinstance(template, str) else None


def build_processor(parts: ProcessorParts, num_mel_bins: int):
    """A native `Qwen3ASRProcessor` from the parts' folders: the tokenizer (`_load_tokenizer`), the feature
    extractor with the settings its config file gives (the original repos name WhisperFeatureExtractor there; the
    native class takes the same mel settings) and the chat template when there is one."""
    from transformers import Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    settings = _feature_extractor_config(parts.feature_extractor) or {}
    accepted = set(inspect.signature(Qwen3ASRFeatureExtractor.__init__).parameters) - {"self", "kwargs"}
    feature_extractor = Qwen3ASRFeatureExtractor(**{k: v for k, v in settings.items() if k in accepted})
    if feature_extractor.feature_size != num_mel_bins:
        raise CheckpointError(
            f"{parts.feature_extractor}: the feature extractor makes {feature_extractor.feature_size} mel bins, the "
            f"model's encoder takes {num_mel_bins}; the processor files belong to another model"
        )
    return Qwen3ASRProcessor(feature_extractor=feature_extractor, tokenizer=_load_tokenizer(parts.tokenizer),
                             chat_template=_load_chat_template(parts.chat_template))


def generation_ids(tokenizer, source: Path) -> tuple[list[int], int]:
    """(eos ids, pad id) as the converted hub repos have them, [<|endoftext|>, <|im_end|>] and <|im_end|>, looked up in
    the checkpoint's own tokenizer; a tokenizer with neither token is an error."""
    vocab = tokenizer.get_vocab()
    eos = [vocab[token] for token in (END_OF_TEXT, IM_END) if token in vocab]
    if not eos:
        raise CheckpointError(f"{source}: the tokenizer has neither {END_OF_TEXT} nor {IM_END}; cannot tell where "
                              "generation stops")
    return eos, vocab.get(IM_END, eos[0])


def check_target(out: Path) -> None:
    """ConfigError unless `out` may receive a conversion: new, an empty folder, or an earlier conversion (with its
    marker)."""
    check_output_folder(out, marker=CONVERSION_MARKER, what="conversion")


def _write(plan: Plan, sha256: str, tmp: Path, out: Path) -> ConversionReport:
    """Write the converted model, processor and marker into `tmp` (a new folder); `out` is where it will live and
    `sha256` the plan's content hash (`plan_sha256`), recorded in the marker."""
    from transformers import GenerationConfig, Qwen3ASRConfig
    from transformers.utils import logging as hf_logging

    source = str(plan.src)
    original = "thinker_config" in plan.config
    if original:
        settings, dropped = native_config_dict(plan.config, str(plan.src / CONFIG_FILE))
    else:
        settings = {k: v for k, v in plan.config.items() if k not in ("architectures", "transformers_version")}
        dropped = []
    raw = read_tensors(plan)
    count, renamed = len(raw), sum(1 for name in raw if native_tensor_name(name) not in (None, name))
    tensors = native_tensors(raw, original, source)
    del raw

    # The LM head: tied when the checkpoint leaves it out (save_pretrained drops a tied copy) or stores the
    # embeddings again; a head trained apart from the embeddings keeps its own tensor and the config says so.
    head = tensors.get(LM_HEAD)
    tied = head is None or (EMBED in tensors and torch.equal(head, tensors[EMBED]))
    if tied and EMBED in tensors:
        tensors[LM_HEAD] = tensors[EMBED]
    settings["tie_word_embeddings"] = tied
    settings["text_config"] = {**settings.get("text_config", {}), "tie_word_embeddings": tied}
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32

    num_mel_bins = settings.get("audio_config", {}).get("num_mel_bins", 128)
    processor = build_processor(plan.processor, num_mel_bins)
    eos, pad = generation_ids(processor.tokenizer, plan.processor.tokenizer)
    vocab = processor.tokenizer.get_vocab()
    if vocab.get(AUDIO_TOKENS["audio_token"]) != settings.get("audio_token_id"):
        audio_token = AUDIO_TOKENS["audio_token"]
        raise CheckpointError(
            f"{plan.processor.tokenizer}: the tokenizer's {audio_token} is id {vocab.get(audio_token)}, the model's "
            f"audio_token_id is {settings.get('audio_token_id')}; the processor files belong to another model"
        )
    settings.update(eos_token_id=eos, pad_token_id=pad, dtype=str(dtype).removeprefix("torch."))
    timestamp = vocab.get("<timestamp>")
    settings.setdefault("timestamp_token_id", timestamp if timestamp is not None else -1)  # -1: no such token
    try:
        config = Qwen3ASRConfig.from_dict(settings)
    except Exception as exc:  # noqa: BLE001 - the strict config classes raise TypeError, ValueError, ...
        raise CheckpointError(f"{plan.src / CONFIG_FILE}: not a valid Qwen3-ASR config after conversion "
                              f"({type(exc).__name__}: {exc})") from None
    if len(processor.tokenizer) > config.text_config.vocab_size:
        raise CheckpointError(f"{plan.processor.tokenizer}: the tokenizer has {len(processor.tokenizer)} tokens, the "
                              f"model's vocabulary {config.text_config.vocab_size}; they belong to different models")

    model = _strict_load(config, tensors, source)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    tmp.mkdir(parents=True)
    hf_logging.disable_progress_bar()  # a "writing shards" bar per conversion is noise in the CLI and the logs
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    report = ConversionReport(
        source=plan.src, out=out, layout=plan.layout, tensors_layout="original" if original else "native",
        tensors=count, renamed=renamed if original else 0, tied_lm_head=tied,
        dtype=str(dtype).removeprefix("torch."), dropped_config_keys=dropped,
        processor={"tokenizer": str(plan.processor.tokenizer),
                   "feature_extractor": str(plan.processor.feature_extractor),
                   "chat_template": None if plan.processor.chat_template is None
                   else str(plan.processor.chat_template)},
        generation={"eos_token_id": eos, "pad_token_id": pad}, sha256=sha256,
    )
    marker = {"caspi": __version__, "converter_version": CONVERTER_VERSION,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": str(plan.src.resolve()),
              "processor_from": plan.processor_from, **report.to_json()}
    marker["out"] = str(out)
    (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False), encoding="utf-8")
    fsync_tree(tmp)
    return report


def convert(src: str | Path, dst: str | Path, *, processor_from: str | Path | None = None) -> ConversionReport:
    """`caspi convert`: the Qwen3-ASR checkpoint `src` (original layout, or a trainer `checkpoint-N/` folder) as a
    native folder `dst` that `from_pretrained` loads, with `caspi_conversion.json` saying what it came from.

    `processor_from` (a hub id or folder) supplies the processor parts `src` lacks. `dst` must be new, empty or an
    earlier conversion; it is written to a temp sibling, fsynced and renamed into place (an earlier conversion is
    moved aside first and deleted last), so a crash leaves the old folder or the new one, complete."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ConfigError(f"{dst}: the output folder is the source; convert into a new folder")
    check_target(dst)
    plan = plan_conversion(src, processor_from)
    tmp = dst.with_name(f".tmp-caspi-convert-{dst.name}-{os.getpid()}")
    if tmp.exists():  # left by a conversion of this process id that was killed (the name is ours alone)
        shutil.rmtree(tmp)
    try:
        report = _write(plan, plan_sha256(plan), tmp, dst)
        aside = dst.with_name(f".tmp-old-caspi-convert-{dst.name}-{os.getpid()}")
        if dst.is_dir() and not any(dst.iterdir()):
            dst.rmdir()
        elif dst.exists():
            os.replace(dst, aside)  # an earlier conversion (check_target): kept until the new one is in place
        try:
            os.replace(tmp, dst)
        except OSError:
            if aside.exists():
                os.replace(aside, dst)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Converting once, for loading


def default_cache_dir() -> Path:
    """Where loading keeps converted copies: $CASPI_CACHE_DIR/converted, else $XDG_CACHE_HOME/caspi/converted,
    else ~/.cache/caspi/converted."""
    root = os.environ.get("CASPI_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "converted"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "caspi" / "converted"


def ensure_native(folder: str | Path, *, processor_from: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> Path:
    """A folder transformers 5.x loads as it is: `folder` itself when it needs no conversion (`needs_conversion`),
    else its converted copy under `cache_dir` (default `default_cache_dir()`), made on first use. The copy is named
    by the content hash of everything the conversion reads (`plan_sha256`), so an edited source or other processor
    files make a new copy and an unchanged one is never converted twice. Says on stderr, in one line, which copy is
    used. Processes converting the same source at once each write their own temp folder; the first rename wins."""
    folder = Path(folder)
    if not needs_conversion(folder):
        return folder
    plan = plan_conversion(folder, processor_from)
    key = plan_sha256(plan)
    name = folder.resolve().name
    if plan.layout == "trainer-checkpoint":  # `checkpoint-800` alone does not say which run
        name = f"{folder.resolve().parent.name}-{name}"
    out = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{name}-{key[:16]}"
    what = "an HF Trainer checkpoint" if plan.layout == "trainer-checkpoint" else "in the original qwen-asr layout"
    if (out / CONVERSION_MARKER).is_file():
        print(f"caspi: {folder} is {what}; loading its converted copy {out}", file=sys.stderr)
        return out
    tmp = out.with_name(f".tmp-caspi-convert-{out.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write(plan, key, tmp, out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / CONVERSION_MARKER).is_file():  # not another process's finished copy: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"caspi: {folder} is {what}; converted it to the native layout in {out}", file=sys.stderr)
    return out
