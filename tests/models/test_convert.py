"""`caspi.models.convert`: Qwen3-ASR checkpoints in the original `qwen-asr` layout and HF Trainer `checkpoint-N/`
folders, converted to the native layout. The fixtures write a tiny native model the way the original repos store one
(tensors under `thinker.*` with the projector in the audio tower, the config nested under `thinker_config` with
`support_languages` and transformers 4.x's auto-populated sub-config keys, the processor files of the original repos),
and every conversion must give back the very same model: equal logits on the same inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from caspi.cli import main
from caspi.errors import CheckpointError, ConfigError
from caspi.models import get_family
from caspi.models.convert import (
    CONVERSION_MARKER,
    convert,
    detect_layout,
    ensure_native,
    native_tensor_name,
    original_tensor_name,
)
from caspi.models.loading import load_model
from caspi.testing import tone

torch.set_num_threads(1)

TEXTS = ["שלום עולם", "מה שלומך היום?"]
AUDIO = [tone(1.0, 300.0), tone(2.2, 900.0)]
# What transformers 4.x wrote into every sub-config (PretrainedConfig attributes), as the original repos hold them.
AUTO_KEYS = {
    "_name_or_path": "", "architectures": None, "add_cross_attention": False, "bad_words_ids": None,
    "chunk_size_feed_forward": 0, "dtype": None, "finetuning_task": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False, "is_encoder_decoder": False, "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "max_length": 20,
    "output_attentions": False, "output_hidden_states": False, "prefix": None, "problem_type": None,
    "pruned_heads": {}, "return_dict": True, "tie_word_embeddings": True, "tokenizer_class": None,
    "torchscript": False, "use_bfloat16": False, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
}
TRAINER_FILES = {"trainer_state.json": b'{"global_step": 12}', "optimizer.pt": b"not a pickle: never opened",
                 "scheduler.pt": b"never opened", "rng_state.pth": b"never opened", "training_args.bin": b"never"}


@pytest.fixture(scope="module")
def tiny():
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=0, size="xs")
    return family, model.eval(), processor


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Converted copies made on load go under the test's own folder, never the user's ~/.cache."""
    monkeypatch.setenv("CASPI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "converted"


def original_config(model) -> dict:
    """The model's config as `qwen-asr` writes it: nested under thinker_config, legacy M-RoPE settings, the encoder's
    max_source_positions and conv_chunksize, no native-only keys."""
    native = model.config.to_dict()
    audio = {k: v for k, v in native["audio_config"].items()
             if k not in ("max_position_embeddings", "transformers_version", "model_type")}
    audio = {**AUTO_KEYS, **audio, "model_type": "qwen3_asr_audio_encoder", "max_source_positions": 1500,
             "conv_chunksize": 500}
    text = {k: v for k, v in native["text_config"].items() if k not in ("transformers_version", "rope_parameters")}
    head_dim = text["head_dim"]
    text = {**AUTO_KEYS, **text, "model_type": "qwen3_asr_text",
            "rope_theta": native["text_config"]["rope_parameters"]["rope_theta"],
            "rope_scaling": {"interleaved": True, "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
                             "rope_type": "default", "type": "default"}}
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "support_languages": ["Chinese", "English", "Hebrew"],
        "thinker_config": {**AUTO_KEYS, "model_type": "qwen3_asr_thinker", "audio_config": audio,
                           "text_config": text, "audio_token_id": native["audio_token_id"],
                           "audio_start_token_id": 3, "user_token_id": 872, "initializer_range": 0.02},
        "transformers_version": "4.57.6",
        "dtype": "float32",
    }


# Native prefix → the name the original repos give it, written here independently of the converter's table so that
# the round trip through the fixture checks the converter's mapping, not the mapping against itself.
ORIGINAL_NAMES = {
    "model.multi_modal_projector.linear_1.": "thinker.audio_tower.proj1.",
    "model.multi_modal_projector.linear_2.": "thinker.audio_tower.proj2.",
    "model.audio_tower.": "thinker.audio_tower.",
    "model.language_model.": "thinker.model.",
    "lm_head.": "thinker.lm_head.",
}


def original_tensors(model) -> dict[str, torch.Tensor]:
    """The model's tensors under their original names; the LM head stored beside the embeddings, as the original
    repos store it (cloned: safetensors refuses shared memory)."""
    out = {}
    for name, tensor in model.state_dict().items():
        prefix = next(p for p in ORIGINAL_NAMES if name.startswith(p))
        out[ORIGINAL_NAMES[prefix] + name[len(prefix):]] = tensor.detach().clone()
    return out


def write_original_processor(processor, folder: Path) -> None:
    """The processor files as the original repos have them: preprocessor_config.json naming WhisperFeatureExtractor,
    chat_template.json, a tokenizer config that does not name the audio tokens."""
    native = folder / ".native-processor"
    processor.save_pretrained(native)
    features = json.loads((native / "processor_config.json").read_text())["feature_extractor"]
    features.update(feature_extractor_type="WhisperFeatureExtractor", processor_class="Qwen3ASRProcessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(features))
    template = (native / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    write_tokenizer(native, folder)
    shutil.rmtree(native)


def write_tokenizer(native: Path, folder: Path) -> None:
    """The tokenizer files alone (what HF Trainer writes into a checkpoint when given the tokenizer)."""
    config = json.loads((native / "tokenizer_config.json").read_text())
    for key in ("audio_token", "audio_bos_token", "audio_eos_token"):
        config.pop(key)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    shutil.copy(native / "tokenizer.json", folder / "tokenizer.json")


def write_original(model, processor, folder: Path, processor_files: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(original_config(model), indent=2))
    save_file(original_tensors(model), folder / "model.safetensors")
    if processor_files:
        write_original_processor(processor, folder)
    return folder


def write_trainer_checkpoint(model, processor, folder: Path, tensors_layout: str) -> Path:
    """`checkpoint-12/` as HF Trainer leaves it for a run started from a hub id: the model in `tensors_layout`, the
    trainer's files, no processor files."""
    if tensors_layout == "original":
        write_original(model, processor, folder, processor_files=False)
    else:
        model.save_pretrained(folder)
    for name, data in TRAINER_FILES.items():
        (folder / name).write_bytes(data)
    return folder


def logits(family, model, processor) -> torch.Tensor:
    batch = family.build_inputs(processor, AUDIO, TEXTS)
    with torch.no_grad():
        return model.eval()(**batch).logits  # (B, L, V)


# --- the mapping ----------------------------------------------------------------------------------------------


def test_every_native_tensor_has_an_original_name_and_back(tiny):
    _, model, _ = tiny
    names = list(model.state_dict())
    originals = list(original_tensors(model))
    assert [original_tensor_name(n) for n in names] == originals
    assert [native_tensor_name(o) for o in originals] == names
    assert original_tensor_name("model.multi_modal_projector.linear_1.weight") == "thinker.audio_tower.proj1.weight"
    assert native_tensor_name("thinker.audio_tower.proj2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert native_tensor_name("thinker.model.norm.weight") == "model.language_model.norm.weight"
    assert native_tensor_name("thinker.lm_head.weight") == "lm_head.weight"
    assert native_tensor_name("model.audio_tower.ln_post.weight") is None


def test_transformers_misreads_the_original_layout_unconverted(tiny, tmp_path):
    # Why the conversion exists: the nested config is read without complaint, at the default 1.7B sizes.
    from transformers import AutoConfig

    folder = write_original(tiny[1], tiny[2], tmp_path / "r1")
    config = AutoConfig.from_pretrained(folder)
    assert config.text_config.hidden_size == 2048 != tiny[1].config.text_config.hidden_size


def test_detect_layout(tiny, tmp_path):
    family, model, processor = tiny
    model.save_pretrained(tmp_path / "native")
    assert detect_layout(tmp_path / "native") == "native"
    assert detect_layout(write_original(model, processor, tmp_path / "orig")) == "original"
    checkpoint = write_trainer_checkpoint(model, processor, tmp_path / "checkpoint-12", "original")
    assert detect_layout(checkpoint) == "trainer-checkpoint"
    with pytest.raises(CheckpointError, match="no config.json"):
        detect_layout(tmp_path)


# --- converting -----------------------------------------------------------------------------------------------


def test_original_layout_converts_to_the_same_model(tiny, tmp_path):
    family, model, processor = tiny
    src = write_original(model, processor, tmp_path / "r1")
    report = convert(src, tmp_path / "r1-hf")

    assert (report.layout, report.tensors_layout, report.tied_lm_head) == ("original", "original", True)
    assert report.tensors == report.renamed == len(model.state_dict())
    assert set(report.dropped_config_keys) == {
        "support_languages", "thinker_config.audio_config.max_source_positions",
        "thinker_config.audio_config.conv_chunksize", "thinker_config.audio_start_token_id",
        "thinker_config.user_token_id"}
    config = json.loads((tmp_path / "r1-hf" / "config.json").read_text())
    assert "thinker_config" not in config and "support_languages" not in config
    assert config["text_config"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert config["audio_config"]["model_type"] == "qwen3_asr_encoder"
    vocab = processor.tokenizer.get_vocab()
    generation = json.loads((tmp_path / "r1-hf" / "generation_config.json").read_text())
    # The REFERENCE.md ids, looked up in this tokenizer (151643/151645 in the real one).
    assert generation["eos_token_id"] == [vocab["<|endoftext|>"], vocab["<|im_end|>"]]
    assert generation["pad_token_id"] == vocab["<|im_end|>"] and generation["do_sample"] is False

    converted, converted_processor = family.load(str(tmp_path / "r1-hf"), dtype=torch.float32)
    a = family.build_inputs(processor, AUDIO, TEXTS)
    b = family.build_inputs(converted_processor, AUDIO, TEXTS)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the original-style processor files give the same inputs
    assert torch.equal(logits(family, model, processor), logits(family, converted, converted_processor))


def test_a_separately_trained_lm_head_stays_separate(tiny, tmp_path):
    family, model, processor = tiny
    src = write_original(model, processor, tmp_path / "r1")
    tensors = load_file(src / "model.safetensors")
    head = tensors["thinker.lm_head.weight"] + 0.5
    save_file({**tensors, "thinker.lm_head.weight": head}, src / "model.safetensors")
    report = convert(src, tmp_path / "r1-hf")
    converted, _ = family.load(str(tmp_path / "r1-hf"), dtype=torch.float32)
    assert report.tied_lm_head is False and converted.config.tie_word_embeddings is False
    assert torch.equal(converted.lm_head.weight, head)
    assert torch.equal(converted.model.language_model.embed_tokens.weight, tensors["thinker.model.embed_tokens.weight"])


def test_sharded_bf16_weights_convert(tiny, tmp_path):
    # As the original repos ship them: bf16, in shards named by model.safetensors.index.json.
    family, model, processor = tiny
    src = write_original(model, processor, tmp_path / "r1")
    tensors = {n: t.to(torch.bfloat16) for n, t in load_file(src / "model.safetensors").items()}
    (src / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, src / file)
    weight_map = {n: file for file, part in shards.items() for n in part}
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    convert(src, tmp_path / "r1-hf")
    converted = load_file(tmp_path / "r1-hf" / "model.safetensors")
    expected = model.state_dict()
    assert set(converted) == set(expected) - {"lm_head.weight"}  # tied: saved once
    assert all(torch.equal(converted[n], expected[n].to(torch.bfloat16)) for n in converted)
    assert json.loads((tmp_path / "r1-hf" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("tensors_layout", ["original", "native"])
def test_trainer_checkpoint_needs_its_processor_from_somewhere(tiny, tmp_path, tensors_layout):
    family, model, processor = tiny
    checkpoint = write_trainer_checkpoint(model, processor, tmp_path / "out" / "checkpoint-12", tensors_layout)
    with pytest.raises(CheckpointError) as refused:
        convert(checkpoint, tmp_path / "r1-hf")
    message = str(refused.value)
    assert "tokenizer_config.json" in message and "preprocessor_config.json" in message
    assert "--processor-from" in message and str(checkpoint) in message
    assert not (tmp_path / "r1-hf").exists()

    processor.save_pretrained(tmp_path / "base")  # the base model's processor, as a folder
    report = convert(checkpoint, tmp_path / "r1-hf", processor_from=str(tmp_path / "base"))
    assert report.layout == "trainer-checkpoint" and report.tensors_layout == tensors_layout
    assert report.processor["feature_extractor"] == str(tmp_path / "base")
    assert not any((tmp_path / "r1-hf" / name).exists() for name in TRAINER_FILES)
    converted, converted_processor = family.load(str(tmp_path / "r1-hf"), dtype=torch.float32)
    assert torch.equal(logits(family, model, processor), logits(family, converted, converted_processor))


def test_trainer_checkpoint_takes_its_own_tokenizer_and_only_the_missing_parts(tiny, tmp_path):
    # What HF Trainer(tokenizer=...) leaves: the tokenizer files, no feature extractor, no chat template.
    _, model, processor = tiny
    checkpoint = write_trainer_checkpoint(model, processor, tmp_path / "checkpoint-12", "original")
    processor.save_pretrained(tmp_path / "native-processor")
    write_tokenizer(tmp_path / "native-processor", checkpoint)
    with pytest.raises(CheckpointError, match="lacks the processor files: preprocessor_config.json") as refused:
        convert(checkpoint, tmp_path / "r1-hf")
    assert "tokenizer_config.json" not in str(refused.value)
    report = convert(checkpoint, tmp_path / "r1-hf", processor_from=str(tmp_path / "native-processor"))
    assert report.processor == {"tokenizer": str(checkpoint),
                                "feature_extractor": str(tmp_path / "native-processor"),
                                "chat_template": str(tmp_path / "native-processor")}


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _drop_a_tensor(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors["thinker.audio_tower.proj2.weight"]
    save_file(tensors, folder / "model.safetensors")


def _index_without_shard(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _pickled(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _bad_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"thinker_config": ')


def _wrong_n_window(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["thinker_config"]["audio_config"]["n_window"] = 100
    (folder / "config.json").write_text(json.dumps(config))


def _adapter(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{}")


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"r1/model\.safetensors: cannot read the weights"),
    (_drop_a_tensor, r"1 missing \(e\.g\. model\.multi_modal_projector\.linear_2\.weight\)"),
    (_index_without_shard, r"names shards that are not there: model-00002-of-00002\.safetensors"),
    (_pickled, r"pytorch_model\.bin.*safetensors only"),
    (_bad_config, r"r1/config\.json: cannot read it"),
    (_wrong_n_window, r"n_window is 100"),
    (_adapter, r"LoRA adapter checkpoint \(adapter_config\.json\)"),
])
def test_a_damaged_folder_is_refused_naming_the_file(tiny, tmp_path, damage, message):
    src = write_original(tiny[1], tiny[2], tmp_path / "r1")
    damage(src)
    with pytest.raises(CheckpointError, match=message):
        convert(src, tmp_path / "r1-hf")
    assert not (tmp_path / "r1-hf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r1"]  # no temp folder left behind


def test_a_native_folder_has_nothing_to_convert(tiny, tmp_path):
    tiny[1].save_pretrained(tmp_path / "native")
    with pytest.raises(CheckpointError, match="already in the native layout"):
        convert(tmp_path / "native", tmp_path / "out")


# --- the command ----------------------------------------------------------------------------------------------


def test_caspi_convert_writes_replaces_and_refuses(tiny, tmp_path, capsys):
    src = write_original(tiny[1], tiny[2], tmp_path / "r1")
    out = tmp_path / "r1-hf"
    assert main(["convert", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"converted {src} (original, tensors in the original layout) to {out}\n")
    assert "config keys dropped: support_languages" in printed
    marker = json.loads((out / CONVERSION_MARKER).read_text())
    assert marker["source"] == str(src.resolve()) and marker["layout"] == "original"

    assert main(["convert", str(src), "--out", str(out)]) == 0  # an earlier conversion is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1", "r1-hf"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["convert", str(src), "--out", str(tmp_path / "mine")]) == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_caspi_convert_trainer_checkpoint_with_processor_from(tiny, tmp_path, capsys):
    checkpoint = write_trainer_checkpoint(tiny[1], tiny[2], tmp_path / "checkpoint-12", "original")
    assert main(["convert", str(checkpoint), "--out", str(tmp_path / "r1-hf")]) == 1
    assert "--processor-from" in capsys.readouterr().err
    tiny[2].save_pretrained(tmp_path / "base")
    argv = ["convert", str(checkpoint), "--out", str(tmp_path / "r1-hf"), "--processor-from", str(tmp_path / "base")]
    assert main(argv) == 0
    assert f"feature extractor from {tmp_path / 'base'}" in capsys.readouterr().out


# --- loading --------------------------------------------------------------------------------------------------


def test_load_model_converts_once_and_decodes(tiny, tmp_path, cache_dir, capsys):
    family, model, processor = tiny
    src = write_original(model, processor, tmp_path / "r1")
    loaded, loaded_processor, loaded_family = load_model(src)
    err = capsys.readouterr().err
    (copy,) = cache_dir.iterdir()
    assert err == f"caspi: {src} is in the original qwen-asr layout; converted it to the native layout in {copy}\n"
    assert loaded_family is family
    expected = family.decode(model, processor, AUDIO, max_new_tokens=8)
    assert family.decode(loaded, loaded_processor, AUDIO, max_new_tokens=8) == expected

    family.load(str(src), dtype=torch.float32)  # the family's own load (training, pinned bases) finds the copy
    err = capsys.readouterr().err
    assert err == f"caspi: {src} is in the original qwen-asr layout; loading its converted copy {copy}\n"
    assert list(cache_dir.iterdir()) == [copy]

    template = json.loads((src / "chat_template.json").read_text())
    (src / "chat_template.json").write_text(json.dumps({"chat_template": template["chat_template"] + " "}))
    assert ensure_native(src) != copy  # an edited source is converted again, never served stale
    assert len(list(cache_dir.iterdir())) == 2


def test_native_folders_and_other_families_load_as_they_are(tiny, tmp_path):
    tiny[1].save_pretrained(tmp_path / "native")
    assert ensure_native(tmp_path / "native") == tmp_path / "native"
    whisper, _ = get_family("whisper").tiny(TEXTS, seed=0)
    whisper.save_pretrained(tmp_path / "wh" / "checkpoint-3")  # another family's trainer folder: not ours
    (tmp_path / "wh" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert ensure_native(tmp_path / "wh" / "checkpoint-3") == tmp_path / "wh" / "checkpoint-3"


def test_a_hub_repo_in_the_original_layout_points_at_its_hf_twin(tiny, tmp_path):
    from transformers import AutoConfig

    family = tiny[0]
    config = AutoConfig.from_pretrained(write_original(tiny[1], tiny[2], tmp_path / "r1"))
    with pytest.raises(CheckpointError) as refused:
        family.check_config(config, "Qwen/Qwen3-ASR-1.7B")
    assert "'Qwen/Qwen3-ASR-1.7B-hf'" in str(refused.value) and "caspi convert DIR --out DST" in str(refused.value)


def test_convert_refuses_its_own_source_as_output(tiny, tmp_path):
    src = write_original(tiny[1], tiny[2], tmp_path / "r1")
    with pytest.raises(ConfigError, match="is the source"):
        convert(src, src)


def test_processor_from_that_cannot_supply_is_named(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants

    checkpoint = write_trainer_checkpoint(tiny[1], tiny[2], tmp_path / "checkpoint-12", "original")
    with pytest.raises(CheckpointError, match=r"processor_from: '\./no-such-folder' is not a folder"):
        convert(checkpoint, tmp_path / "r1-hf", processor_from="./no-such-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=rf"neither {checkpoint} nor processor_from '{tmp_path / 'empty'}'"):
        convert(checkpoint, tmp_path / "r1-hf", processor_from=str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: the hub path's error
    with pytest.raises(CheckpointError, match="cannot fetch the processor files of hub id 'Qwen/Qwen3-ASR-1.7B-hf'"):
        convert(checkpoint, tmp_path / "r1-hf", processor_from="Qwen/Qwen3-ASR-1.7B-hf")
