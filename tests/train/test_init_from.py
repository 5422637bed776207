"""Round 2 from Round-1 weights: `model.init_from` names the model a run starts from (a Caspi run, a folder in the
original qwen-asr layout, ...) apart from the architecture's base; run.json records both, and the run copies the
Round-1 weights in, so it never needs the Round-1 folder again."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from caspi.config import load_recipe
from caspi.data.cuts import cut_text, file_sha256, read_manifest
from caspi.errors import CheckpointError, ConfigError
from caspi.models import get_family
from caspi.models.convert import folder_sha256
from caspi.models.loading import load_model, read_weights
from caspi.testing import save_tiny_model, tone, torch_threads
from caspi.train import checkpoint as ckpt
from caspi.train import loop

TEXTS = ["שלום עולם", "מה שלומך היום?"]
AUDIO = [tone(1.0, 300.0), tone(2.2, 900.0)]
# Round 2 trains a different set than Round 1 (projector + LM head, one phase), without Round 1's CTC head.
ROUND2 = {
    "unfreeze": {"groups": {"projector": {}, "lm_head": {}},
                 "phases": [{"name": "B", "start_epoch": 1, "lr": {"projector": 1e-3, "lm_head": 1e-3}}]},
}


@pytest.fixture(autouse=True)
def one_thread_and_own_cache(tmp_path, monkeypatch):
    """Converted copies of original-layout folders go under the test's folder, never the user's ~/.cache."""
    monkeypatch.setenv("CASPI_CACHE_DIR", str(tmp_path / "cache"))
    with torch_threads(1):
        yield


def round2_recipe(make_recipe, init_from: Path, **train) -> Path:
    return make_recipe("round2", model={"init_from": str(init_from)}, **ROUND2,
                       train={"ctc_aux_weight": 0.0, "epochs": 1, "save_every_steps": 1, **train})


def logits(model, processor) -> torch.Tensor:
    batch = get_family("qwen3_asr").build_inputs(processor, AUDIO, TEXTS)
    with torch.no_grad():
        return model.eval()(**batch).logits  # (B, L, V)


def test_round2_starts_from_a_caspi_run_and_outlives_it(reference_run, make_recipe, read_run, tmp_path,
                                                        monkeypatch, capsys):
    round1 = tmp_path / "round1"
    shutil.copytree(reference_run[1], round1)  # the shared reference run stays untouched
    r1_model, r1_processor, _ = load_model(round1)
    expected = logits(r1_model, r1_processor)
    recipe = load_recipe(round2_recipe(make_recipe, round1, max_steps=2))
    run_dir = tmp_path / "round2"

    # The model Round 2 builds at step 0 is Round 1's, tensor for tensor.
    start = loop.TrainingRun(recipe, run_dir, overrides=[], force_gate=False, cpu_fallback=False, progress=False)
    try:
        start.setup()
        torch.testing.assert_close(logits(start.model, start.processor), expected, rtol=0, atol=0)
    finally:
        start.cleanup()
    err = capsys.readouterr().err
    assert f"model    qwen3_asr tiny-xs, weights from {round1}" in err and "copied into" in err

    meta = json.loads((run_dir / "run.json").read_text())
    r1_checkpoint = ckpt.find_latest(round1 / "checkpoints")
    r1_meta = json.loads((round1 / "run.json").read_text())
    assert meta["init_from"] == {
        "spec": str(round1), "kind": "caspi_run", "run": str(round1.resolve()), "checkpoint": r1_checkpoint.name,
        "step": 10, "weights_sha256": file_sha256(r1_checkpoint / ckpt.WEIGHTS_FILE), "base": r1_meta["base"],
    }
    assert meta["architecture"] == {"family": "qwen3_asr", "tiny": "xs"}
    assert meta["base"]["kind"] == "folder" and meta["base"]["in_run"] and meta["base"]["name_or_path"] == "base"
    assert "tiny" not in meta["base"]  # no random tiny model was built

    # Preempted in the middle of step 2; Round 1's folder then disappears; the resume and every load go on.
    calls = {"n": 0}
    original = loop.TrainingRun._forward_backward

    def counting(self, batch, sync):
        result = original(self, batch, sync)
        calls["n"] += 1
        if calls["n"] == 3:  # accumulation 2: the first half of step 2
            self.preempt.signal = signal.SIGTERM
        return result

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", counting)
    assert loop.train(recipe, run_dir, progress=False).preempted
    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", original)
    round1.rename(tmp_path / "round1-moved")
    resumed = loop.train(recipe, run_dir, progress=False)
    assert resumed.step == 2 and not resumed.preempted
    assert [step for step, _ in read_run.losses(run_dir)] == [1, 2]
    trained = read_weights(ckpt.find_latest(run_dir / "checkpoints"))
    # Projector and LM head only (the tiny model's LM head is tied to the input embeddings).
    assert sorted(trained) == ["model.language_model.embed_tokens.weight"] + [
        f"model.multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]
    r2_model, r2_processor, _ = load_model(run_dir)
    moved = logits(r2_model, r2_processor)
    assert moved.shape == expected.shape and not torch.equal(moved, expected)  # Round 2 trained on top of Round 1


def _convert_helpers():
    """The original-layout writers of tests/models/test_convert.py. The suite runs with --import-mode=importlib,
    where a sibling test module is not importable by name: load it by path."""
    path = Path(__file__).parents[1] / "models" / "test_convert.py"
    spec = importlib.util.spec_from_file_location("_convert_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round2_starts_from_an_original_layout_folder(train_corpus, make_recipe, tmp_path):
    texts = sorted({cut_text(c) for c in read_manifest(train_corpus / "train.jsonl.gz")})
    model, processor = get_family("qwen3_asr").tiny(texts, seed=3, size="xs")
    source = _convert_helpers().write_original(model, processor, tmp_path / "r1-qwen-asr")
    recipe = load_recipe(round2_recipe(make_recipe, source, max_steps=1))

    result = loop.train(recipe, tmp_path / "round2", progress=False)

    assert result.step == 1
    meta = json.loads((tmp_path / "round2" / "run.json").read_text())
    init = meta["init_from"]
    assert init["kind"] == "folder" and init["layout"] == "original" and init["path"] == str(source.resolve())
    assert init["sha256"] == folder_sha256(source)  # of the folder as given, which was only read
    # RUN/base is the converted Round-1 model, every tensor equal to the one written in the original layout.
    base = load_file(tmp_path / "round2" / "base" / "model.safetensors")
    native = model.state_dict()
    assert set(native) - set(base) == {"lm_head.weight"}  # tied to the embeddings: saved once
    assert all(torch.equal(base[n], native[n]) for n in base)


def test_round2_starts_from_a_hub_id_at_its_commit(train_corpus, make_recipe, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # An offline hub cache holding Round 1 as `org/r1` at commit SHA (main → SHA); `org/arch` is nowhere.
    sha = "c0ffee" + "0" * 34
    repo = tmp_path / "hub" / "models--org--r1"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    texts = sorted({cut_text(c) for c in read_manifest(train_corpus / "train.jsonl.gz")})
    save_tiny_model(repo / "snapshots" / sha, texts, seed=4)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = make_recipe("round2", model={"init_from": "org/r1", "init_revision": "main", "tiny": None,
                                        "name_or_path": "org/arch"}, **ROUND2,
                       train={"ctc_aux_weight": 0.0, "epochs": 1, "max_steps": 1})

    assert loop.train(load_recipe(path), tmp_path / "round2", progress=False).step == 1

    meta = json.loads((tmp_path / "round2" / "run.json").read_text())
    assert meta["base"] == {"kind": "hub", "name_or_path": "org/r1", "requested_revision": "main", "revision": sha}
    assert meta["init_from"] == {"spec": "org/r1", "kind": "hub", "revision": sha}
    # The architecture's base cannot be resolved offline: recorded as such, and the run went on.
    assert meta["architecture"] == {"family": "qwen3_asr", "name_or_path": "org/arch", "requested_revision": None,
                                    "revision": None}
    assert not (tmp_path / "round2" / "base").exists()  # a hub id is pinned by commit, not copied


def test_a_missing_init_from_is_named_before_any_model_work(make_recipe, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub is never asked, whatever the network
    missing = tmp_path / "no-such-round1"
    recipe = load_recipe(round2_recipe(make_recipe, missing))
    with pytest.raises(CheckpointError, match=f"model.init_from: '{missing}' does not exist; expected a Caspi run"):
        loop.train(recipe, tmp_path / "round2", progress=False)
    assert not (tmp_path / "round2" / "run.json").exists() and not (tmp_path / "round2" / "base").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="is not a model folder .no config.json, no run.json"):
        loop.train(load_recipe(round2_recipe(make_recipe, empty)), tmp_path / "round2b", progress=False)
    with pytest.raises(CheckpointError, match="model.init_from: 'org/no-such-round1' is no local folder, and as a "
                                              "hub id: cannot resolve"):
        loop.train(load_recipe(make_recipe("hub", model={"init_from": "org/no-such-round1"})), tmp_path / "round2c",
                   progress=False)
    with pytest.raises(ConfigError, match="model.init_revision: 'v1' is a hub revision, but model.init_from"):
        loop.train(load_recipe(make_recipe("rev", model={"init_from": str(empty), "init_revision": "v1"})),
                   tmp_path / "round2d", progress=False)


def test_a_whisper_round1_cannot_start_a_qwen_round2(make_recipe, tmp_path):
    whisper = save_tiny_model(tmp_path / "whisper-r1", TEXTS, family="whisper")
    recipe = load_recipe(round2_recipe(make_recipe, whisper))
    with pytest.raises(ConfigError) as err:
        loop.train(recipe, tmp_path / "round2", progress=False)
    assert str(err.value).startswith(f"model.init_from: '{whisper}' is a whisper model, but model.family is "
                                     "qwen3_asr")
    assert not (tmp_path / "round2" / "base").exists()
