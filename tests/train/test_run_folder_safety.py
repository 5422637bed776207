"""A run folder is safe to open and to trust (issue #14, items 6-9): no pickle in it is ever executed, export never
deletes a folder it did not make, the base model is pinned, and a resume refuses a manifest that changed."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from caspi.audit.gate import file_sha256
from caspi.cli import main
from caspi.config import EvalConfig, load_recipe
from caspi.data.cuts import cut_text, read_manifest, write_manifest
from caspi.errors import CheckpointError
from caspi.eval.evaluate import evaluate
from caspi.models import loading
from caspi.models.families import get_family
from caspi.models.loading import folder_sha256, load_pinned, pin_base, resolve_hub_revision
from caspi.testing import save_tiny_model
from caspi.train import checkpoint as ckpt
from caspi.train import loop
from caspi.models.loading import load_run
from caspi.train.export import EXPORT_MARKER

SHA = "0123456789abcdef0123456789abcdef01234567"


class Trap:
    """Unpickling this calls `open(marker, "w")`: the marker file appearing means a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_traps(run, marker) -> None:
    """Replace both pickles of every checkpoint of `run` by booby-trapped ones."""
    for folder in ckpt.list_checkpoints(run / "checkpoints"):
        for name in (ckpt.OPTIMIZER_FILE, "rank-0.pt"):
            torch.save({"state": {}, "param_groups": [], "payload": Trap(marker)}, folder / name)


def preempt_after(monkeypatch, n_micro: int) -> None:
    """Make the next `loop.train` stop (as on SIGTERM) after `n_micro` micro-batches."""
    calls = {"n": 0}
    original = loop.TrainingRun._forward_backward

    def counting(self, batch, sync):
        result = original(self, batch, sync)
        calls["n"] += 1
        if calls["n"] == n_micro:
            self.preempt.signal = signal.SIGTERM
        return result

    monkeypatch.setattr(loop.TrainingRun, "_forward_backward", counting)


# ---------------------------------------------------------------------------------------------- 6: no pickle runs


def test_a_booby_trapped_run_folder_never_executes_its_pickles(reference_run, train_corpus, tmp_path, capsys):
    recipe, ref_dir, _ = reference_run
    run = tmp_path / "shared-run"
    shutil.copytree(ref_dir, run)
    marker = tmp_path / "PWNED"
    plant_traps(run, marker)
    eval_manifest = write_manifest(read_manifest(train_corpus / "eval.jsonl.gz").subset(first=2),
                                   tmp_path / "eval.jsonl.gz")

    # eval loads the run with `load_model`, as the audit's `asr` scorer does.
    evaluate(eval_manifest, tmp_path / "eval", EvalConfig(max_new_tokens=2), model=str(run), resamples=20,
             progress=False)
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    assert main(["compare", str(run), str(tmp_path / "eval"), "--manifest", str(eval_manifest), "--out",
                 str(tmp_path / "cmp"), "--resamples", "20", "--quiet"]) == 0
    capsys.readouterr()
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint file optimizer\.pt.*never loads"):
        loop.train(load_recipe(recipe), run, progress=False)
    assert not marker.exists()

    # The trap is live: the unsafe load the code used to do runs it.
    armed = next(iter(ckpt.list_checkpoints(run / "checkpoints"))) / ckpt.OPTIMIZER_FILE
    torch.load(armed, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- 7: export


def test_export_refuses_a_folder_it_did_not_make_and_deletes_nothing(reference_run, tmp_path, capsys):
    _, run, _ = reference_run
    models = tmp_path / "models"
    (models / "other-model").mkdir(parents=True)
    (models / "other-model" / "config.json").write_text("{}")
    (models / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(models)) for p in models.rglob("*"))

    assert main(["export", str(run), "--out", str(models)]) == 2
    err = capsys.readouterr().err
    assert "not an earlier Caspi export" in err and "notes.txt" in err
    assert sorted(str(p.relative_to(models)) for p in models.rglob("*")) == before
    assert (models / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no temp folder left beside it

    (tmp_path / "a-file").write_text("x")
    assert main(["export", str(run), "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == "x"


def test_export_replaces_an_earlier_export_atomically(reference_run, tmp_path, monkeypatch):
    _, run, _ = reference_run
    out = tmp_path / "model"
    assert main(["export", str(run), "--out", str(out)]) == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["checkpoint"] == ckpt.find_latest(run / "checkpoints").name and marker["base"]["kind"] == "folder"
    (out / "stale.txt").write_text("from the first export")

    # A failure while writing the new export leaves the old one as it was.
    model, processor, _ = load_run(run)
    monkeypatch.setattr(type(processor), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        from caspi.train.export import export_model

        export_model(model, processor, out)
    monkeypatch.undo()
    assert (out / "stale.txt").is_file() and (out / EXPORT_MARKER).is_file()

    # A kill between the two renames (old aside, new not yet in): the next export puts the old one back first,
    # then replaces it.
    real_replace = ckpt.os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_then_die)
    assert main(["export", str(run), "--out", str(out)]) == 130  # the CLI's exit code for an interruption
    monkeypatch.undo()
    aside = tmp_path / ".tmp-old-model"
    assert not out.exists() and (aside / "stale.txt").is_file()  # the old export is complete, aside

    assert main(["export", str(run), "--out", str(out)]) == 0
    assert (out / EXPORT_MARKER).is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------------------------------------- 8: pinned base


def test_a_changed_local_base_is_refused_by_eval_export_and_resume(make_recipe, train_corpus, tmp_path, capsys):
    texts = sorted({cut_text(c) for c in read_manifest(train_corpus / "train.jsonl.gz")})
    base = save_tiny_model(tmp_path / "base-model", texts, seed=0, size="xs", audio_init="he")
    recipe = load_recipe(make_recipe(model={"tiny": None, "name_or_path": str(base)},
                                     train={"max_steps": 1, "save_every_steps": 1}, data={"eval_manifest": None}))
    run = tmp_path / "run"
    loop.train(recipe, run, progress=False)
    pinned = json.loads((run / "run.json").read_text())["base"]
    assert pinned == {"kind": "folder", "name_or_path": str(base.resolve()), "in_run": False,
                      "sha256": folder_sha256(base)}
    assert load_run(run)[0] is not None  # unchanged: loads

    config = json.loads((base / "config.json").read_text())
    config["vocab_note"] = "edited after training"
    (base / "config.json").write_text(json.dumps(config))
    now = folder_sha256(base)
    assert now != pinned["sha256"]
    both = rf"{pinned['sha256']}.*{now}"
    with pytest.raises(CheckpointError, match=both):
        evaluate(train_corpus / "eval.jsonl.gz", tmp_path / "eval", model=str(run), progress=False)
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 1
    assert pinned["sha256"] in (err := capsys.readouterr().err) and now in err
    assert not (tmp_path / "export").exists()
    with pytest.raises(CheckpointError, match=both):
        loop.train(recipe, run, progress=False)


def test_a_hub_base_is_pinned_to_its_commit_and_loaded_at_it(reference_run, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "resolve_hub_revision", lambda repo, revision: SHA)
    pin = pin_base("org/model", "main")
    assert pin == {"kind": "hub", "name_or_path": "org/model", "requested_revision": "main", "revision": SHA}

    # A run pinned to that commit loads exactly it (eval/export/resume all go through load_pinned).
    _, ref_dir, _ = reference_run
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    meta = json.loads((run / "run.json").read_text())
    meta["recipe"]["model"].update(tiny=None, name_or_path="org/model", revision="main")
    meta["base"] = pin
    (run / "run.json").write_text(json.dumps(meta))
    family = get_family("qwen3_asr")
    loads = []
    real_load = family.load

    def fake_hub(name_or_path, revision=None, dtype=torch.float32):
        loads.append((name_or_path, revision))
        return real_load(str(run / "base"), dtype=dtype)  # the hub stands in by the run's own base files

    monkeypatch.setattr(family, "load", fake_hub)
    load_run(run)
    assert loads == [("org/model", SHA)]
    load_pinned(family, pin, torch.float32)
    assert loads[-1] == ("org/model", SHA)


def test_resolve_hub_revision_from_the_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "snapshots" / SHA / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_hub_revision("org/model", None) == SHA
    assert resolve_hub_revision("org/model", "main") == SHA
    assert resolve_hub_revision("org/other", "f" * 40) == "f" * 40  # a sha is already pinned
    with pytest.raises(CheckpointError, match=r"'org/model' at revision 'v2'.*cache does not hold it"):
        resolve_hub_revision("org/model", "v2")


def test_folder_hash_follows_content_not_docs(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 3_000_000)  # more than one 1 MiB block
    first = folder_sha256(tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("notes")
    (tmp_path / "m" / ".cache").mkdir()
    (tmp_path / "m" / ".cache" / "x").write_text("y")
    assert folder_sha256(tmp_path / "m") == first
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 2_999_999 + b"\x01")
    assert folder_sha256(tmp_path / "m") != first


# ---------------------------------------------------------------------------------------------- 9: changed data


def test_resume_refuses_a_changed_manifest_and_new_data_restarts_the_epoch(make_recipe, train_corpus, read_run,
                                                                          tmp_path, monkeypatch, capsys):
    manifest = tmp_path / "train.jsonl.gz"
    shutil.copy(train_corpus / "train.jsonl.gz", manifest)
    recipe_path = make_recipe(data={"train_manifest": str(manifest)}, train={"max_steps": 4})
    run = tmp_path / "run"
    preempt_after(monkeypatch, 3)  # step 1 done, one micro-batch into step 2
    stopped = loop.train(load_recipe(recipe_path), run, progress=False)
    monkeypatch.undo()
    assert stopped.preempted and ckpt.find_latest(run / "checkpoints").name == "step-000001-m01"
    old = file_sha256(manifest)
    assert json.loads((run / "run.json").read_text())["manifests"]["train"] == {"path": str(manifest),
                                                                                "sha256": old}

    # The manifest is regenerated at the same path with other cuts.
    cuts = read_manifest(manifest)
    write_manifest(cuts.subset(first=24), manifest)
    new = file_sha256(manifest)
    with pytest.raises(CheckpointError, match=rf"train manifest changed.*{old} then, {new} now.*--new-data"):
        loop.train(load_recipe(recipe_path), run, progress=False)
    capsys.readouterr()

    assert main(["train", "--recipe", str(recipe_path), "--out", str(run), "--quiet", "--new-data"]) == 0
    err = capsys.readouterr().err
    assert "step 1, epoch 1, phase B, 0 batches into the epoch" in err  # no micro-batch of the old data kept
    events = [e for e in read_run.events(run) if e["event"] == "new_data"]
    assert len(events) == 1 and old in events[0]["message"] and "epoch 1 restarts" in events[0]["message"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["manifests"]["train"]["sha256"] == new
    assert meta["data_changes"][0]["changed"] == {"train": {"old": old, "new": new}}
    assert [step for step, _ in read_run.losses(run)] == [1, 2, 3, 4]
