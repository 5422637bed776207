"""Tests for caspi.train.state: the counters round-trip through state.json and through a whole checkpoint, the
learning-rate schedule, the resume checks, and the recipe diff a refused resume names. (run.json itself is exercised
end to end by tests/train/test_run_folder_safety.py.)"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from lhotse import CutSet

from caspi.config import validate_recipe_dict
from caspi.data.audio import SAMPLE_RATE
from caspi.data.cuts import make_cut
from caspi.data.sampling import make_sampler
from caspi.errors import CheckpointError
from caspi.train import checkpoint as ckpt
from caspi.train.state import (
    CTC_HEAD_PREFIX,
    Progress,
    check_resumable,
    diff_keys,
    load_optimizer,
    lr_factor,
    phase_for,
    restore_position,
    snapshot,
)

# state.json's keys, in the order checkpoints have always written them.
STATE_KEYS = ["step", "epoch", "micro", "consumed", "phase", "phase_start_step", "chunks", "bad_steps", "best",
              "last_loss", "trained"]


def recipe(**train):
    """Two phases (B from epoch 1, A from epoch 3) over 4 epochs; `train` updates the train section."""
    return validate_recipe_dict({
        "name": "state-test",
        "model": {"family": "qwen3_asr", "tiny": "xs", "dtype": "float32"},
        "hardware": {"accelerator": "cpu"},
        "data": {"train_manifest": "train.jsonl.gz"},
        "train": {"epochs": 4, "micro_batch": 2, "effective_batch": 2, "warmup_steps": 2, **train},
        "unfreeze": {"groups": {"projector": {}, "lm_head": {}},
                     "phases": [{"name": "B", "start_epoch": 1, "lr": {"projector": 1e-3}},
                                {"name": "A", "start_epoch": 3, "lr": {"projector": 1e-3, "lm_head": 1e-4}}]},
    })


def sampler(n: int = 12):
    rng = random.Random(0)
    cuts = CutSet.from_cuts(make_cut(f"utt{i:02d}", "/nonexistent.flac", int(rng.uniform(1, 5) * SAMPLE_RATE), "שלום")
                            for i in range(n))
    s = make_sampler(cuts, max_cuts=2, max_duration=None, num_buckets=2, seed=3)
    s.set_epoch(1)
    return s


def progress() -> Progress:
    return Progress(step=7, epoch=2, micro=1, consumed=3, phase="B", phase_start_step=5, chunks=2, bad_steps=1,
                    best=(0.25, "step-000006"), last_loss=1.5, trained={"b.weight", "a.weight"})


def test_progress_round_trips_through_state_json_in_the_saved_key_order():
    p = progress()
    saved = json.loads(json.dumps(p.to_state()))
    assert list(saved) == STATE_KEYS
    assert saved["trained"] == ["a.weight", "b.weight"] and saved["best"] == [0.25, "step-000006"]
    assert Progress.from_state({**saved, "fingerprint": "ignored"}) == p
    assert Progress.from_state(Progress().to_state()) == Progress()


def test_progress_and_the_partial_step_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, head = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)
    named = [("weight", model.weight), ("bias", model.bias)]
    named += [(CTC_HEAD_PREFIX + n, t) for n, t in head.named_parameters()]
    optimizer = torch.optim.AdamW([t for _, t in named], lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()  # a step interrupted after one micro-batch: gradients pending
    s = sampler()
    batches = iter(s)
    next(batches)  # the micro-batch of the interrupted step
    p = Progress(micro=1, consumed=1, phase="B", trained={"weight", "bias"})
    step_loss = torch.tensor([2.0, 1.5, 0.5])
    run = {"metrics_offset": 10, "wandb_id": None, "fingerprint": "f", "base": None, "manifests": {}}
    snap = snapshot(p, model=model, ctc_head=head, named_trainable=named, optimizer=optimizer, sampler=s,
                    step_loss=step_loss, run=run)
    assert list(snap.state) == STATE_KEYS + list(run)
    assert sorted(snap.weights) == [CTC_HEAD_PREFIX + "bias", CTC_HEAD_PREFIX + "weight", "bias", "weight"]
    assert set(snap.rank_state["grads"]) == {"weight", "bias"}  # the head had no gradient yet

    folder = ckpt.save_checkpoint(tmp_path, snap)
    assert folder.name == "step-000000-m01"
    back = ckpt.load_checkpoint(folder)
    assert Progress.from_state(back.state) == p
    fresh = [(n, torch.zeros_like(t, requires_grad=True)) for n, t in named]
    twin = sampler()
    restored_loss = restore_position(back.rank_state, twin, fresh)
    assert torch.equal(restored_loss, step_loss)
    grads = {n: t.grad for n, t in fresh}
    assert torch.equal(grads["weight"], model.weight.grad) and grads[CTC_HEAD_PREFIX + "bias"] is None
    assert [c.id for c in next(iter(twin))] == [c.id for c in next(batches)]  # it goes on where it stopped


def test_at_a_step_boundary_no_gradients_are_saved():
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    snap = snapshot(Progress(phase="B", trained={"weight"}), model=model, ctc_head=None,
                    named_trainable=list(model.named_parameters()), optimizer=torch.optim.SGD(model.parameters(), 0.1),
                    sampler=sampler(), step_loss=torch.zeros(3), run={})
    assert snap.rank_state["grads"] == {} and list(snap.weights) == ["weight"]


def test_lr_warms_up_then_decays_within_each_phase():
    r = recipe(schedule="cosine")  # 5 steps per epoch: phase B is steps 0-9, phase A steps 10-19
    factors = [lr_factor(r, Progress(step=s, phase="B", phase_start_step=0), 5) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]  # warmup: (s + 1) / 2
    assert factors[2] == 1.0 and factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert lr_factor(r, Progress(step=10, phase="A", phase_start_step=10), 5) == 0.5  # A warms up again
    assert lr_factor(r, Progress(step=30, phase="A", phase_start_step=10), 5) == pytest.approx(0.0)  # past the end
    linear = recipe(schedule="linear", warmup_steps=0)
    assert lr_factor(linear, Progress(step=5, phase="B"), 5) == pytest.approx(0.5)
    constant = recipe(schedule="constant", warmup_steps=0)
    assert {lr_factor(constant, Progress(step=s, phase="B"), 5) for s in range(10)} == {1.0}


def test_phase_for_an_epoch_is_the_last_one_started():
    r = recipe()
    assert [phase_for(r, e).name for e in (1, 2, 3, 4)] == ["B", "B", "A", "A"]


def test_resume_checks_name_the_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints" / "step-000004"
    with pytest.raises(CheckpointError, match=r"step-000004 was written by 2 process\(es\), this run has 1"):
        check_resumable({"world_size": 2, "fingerprint": "f"}, world_size=1, fingerprint="f", checkpoint=folder)
    with pytest.raises(CheckpointError, match=r"checkpoints: the checkpoint was made with another recipe"):
        check_resumable({"fingerprint": "old"}, world_size=1, fingerprint="new", checkpoint=folder)
    check_resumable({"fingerprint": "f"}, world_size=1, fingerprint="f", checkpoint=folder)  # world size 1 implied


def test_optimizer_state_loads_only_into_the_same_groups(tmp_path):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    saved = torch.optim.AdamW([{"params": [a], "name": "g", "param_names": ["a"]}]).state_dict()
    same = torch.optim.AdamW([{"params": [a], "name": "g", "param_names": ["a"]}])
    load_optimizer(same, saved, phase="B", where=tmp_path)
    other = torch.optim.AdamW([{"params": [b], "name": "g", "param_names": ["b"]}])
    with pytest.raises(CheckpointError, match="optimizer groups in the checkpoint differ from the recipe's phase 'B'"):
        load_optimizer(other, saved, phase="B", where=tmp_path)


def test_diff_keys_names_every_changed_leaf():
    old = {"train": {"lr": 1, "seed": 0}, "name": "x"}
    assert diff_keys(old, {"train": {"lr": 2, "seed": 0}, "name": "x", "extra": {"k": 1}}) == {"train.lr", "extra"}
    assert diff_keys(old, old) == set()
