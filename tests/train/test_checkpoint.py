"""Atomic checkpoints (caspi.train.checkpoint) on tiny tensors: round trip, `latest`, partial writes, pruning,
naming order, and that every unreadable checkpoint becomes a CheckpointError that says why."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from caspi.errors import CheckpointError
from caspi.train import checkpoint as ckpt


def snapshot(step: int, micro: int = 0, seed: int = 0) -> ckpt.Snapshot:
    """A small but realistic snapshot: two weights, AdamW state for them, RNG states, a sampler dict, grads."""
    g = torch.Generator().manual_seed(seed + step)
    weights = {"proj.weight": torch.randn(4, 3, generator=g), "proj.bias": torch.randn(4, generator=g)}
    params = [torch.nn.Parameter(w.clone()) for w in weights.values()]
    opt = torch.optim.AdamW([{"params": params, "param_names": list(weights), "name": "proj"}], lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    rank_state = {
        "rng": ckpt.capture_rng(),
        "sampler": {"epoch": 2, "kept_batches": 5, "seed": 1},
        "grads": {"proj.bias": torch.full((4,), 0.5)} if micro else {},
        "pending_loss": torch.tensor([1.5, 1.2, 0.3]),
    }
    state = {"step": step, "epoch": 1, "micro": micro, "phase": "B", "metrics_offset": 123, "note": "שלום"}
    return ckpt.Snapshot(state=state, weights=weights, optimizer=opt.state_dict(), rank_state=rank_state)


def save(root: Path, step: int, micro: int = 0, **kwargs) -> Path:
    return ckpt.save_checkpoint(root, snapshot(step, micro), **kwargs)


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# ---------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    snap = snapshot(7, micro=2)
    folder = ckpt.save_checkpoint(tmp_path, snap)
    assert folder == tmp_path / "step-000007-m02"
    assert sorted(p.name for p in folder.iterdir()) == ["optimizer.pt", "rank-0.pt", "state.json",
                                                         "trainable.safetensors"]
    back = ckpt.load_checkpoint(folder)

    assert back.weights.keys() == snap.weights.keys()
    for name, tensor in snap.weights.items():
        assert torch.equal(back.weights[name], tensor)
    # Optimizer: the same groups (names included) and the same AdamW state, bit for bit.
    assert back.optimizer["param_groups"] == snap.optimizer["param_groups"]
    assert back.optimizer["state"].keys() == snap.optimizer["state"].keys()
    for i, entry in snap.optimizer["state"].items():
        for key, value in entry.items():
            assert torch.equal(back.optimizer["state"][i][key], value), (i, key)
    # Rank state: every RNG restores to the same stream, plus sampler, grads and pending loss.
    rs = back.rank_state
    assert rs["sampler"] == snap.rank_state["sampler"]
    assert torch.equal(rs["grads"]["proj.bias"], snap.rank_state["grads"]["proj.bias"])
    assert torch.equal(rs["pending_loss"], snap.rank_state["pending_loss"])
    assert rs["rng"].keys() == snap.rank_state["rng"].keys()
    draws = []
    for rng in (snap.rank_state["rng"], rs["rng"]):
        ckpt.restore_rng(rng)
        draws.append((random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()))
    assert draws[0] == draws[1]
    # State: what was given plus the writer's additions.
    assert {k: back.state[k] for k in snap.state} == snap.state
    assert back.state["world_size"] == 1 and "saved_at" in back.state


def test_weights_are_saved_as_plain_copies(tmp_path):
    """A non-contiguous view and two names sharing storage (tied weights) would make safetensors refuse."""
    base = torch.arange(12.0).reshape(3, 4)
    snap = snapshot(1)
    snap.weights = {"t": base.t(), "a": base, "b": base}
    back = ckpt.load_checkpoint(ckpt.save_checkpoint(tmp_path, snap))
    assert torch.equal(back.weights["t"], base.t()) and torch.equal(back.weights["b"], base)


# ---------------------------------------------------------------------------------------------- latest and partials


def test_latest_points_at_the_newest(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=5)
        assert (tmp_path / "latest").read_text(encoding="utf-8") == f"step-{step:06d}\n"
        assert ckpt.find_latest(tmp_path) == tmp_path / f"step-{step:06d}"
    assert names(ckpt.list_checkpoints(tmp_path)) == ["step-000001", "step-000002", "step-000003"]


def test_empty_or_missing_root(tmp_path):
    assert ckpt.list_checkpoints(tmp_path / "nope") == []
    assert ckpt.find_latest(tmp_path / "nope") is None
    assert ckpt.clean_partial(tmp_path / "nope") == []
    assert ckpt.find_latest(tmp_path) is None


def test_folder_without_state_json_is_not_a_checkpoint(tmp_path):
    save(tmp_path, 1)
    incomplete = tmp_path / "step-000005"  # newer, but its write never reached state.json
    incomplete.mkdir()
    (incomplete / "trainable.safetensors").write_bytes(b"")
    (tmp_path / "notes").mkdir()  # not a checkpoint name at all
    assert names(ckpt.list_checkpoints(tmp_path)) == ["step-000001"]
    assert ckpt.find_latest(tmp_path) == tmp_path / "step-000001"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(incomplete)


def test_clean_partial_removes_tmp_leftovers_only(tmp_path):
    save(tmp_path, 1)
    (tmp_path / ".tmp-step-000002").mkdir()  # a write killed before its rename
    (tmp_path / ".tmp-step-000002" / "rank-0.pt").write_bytes(b"partial")
    (tmp_path / ".tmp-old-step-000001").mkdir()  # a re-save killed between its two renames
    (tmp_path / ".latest.tmp-4242").write_text("step-000002\n")  # a killed pointer update
    assert ckpt.find_latest(tmp_path) == tmp_path / "step-000001"  # never mistaken for a checkpoint
    removed = ckpt.clean_partial(tmp_path)
    assert sorted(removed) == [".latest.tmp-4242", ".tmp-old-step-000001", ".tmp-step-000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000001"]
    assert ckpt.clean_partial(tmp_path) == []


def test_save_over_a_leftover_tmp_folder(tmp_path):
    (tmp_path / ".tmp-step-000004").mkdir(parents=True)
    (tmp_path / ".tmp-step-000004" / "junk").write_bytes(b"x")
    folder = save(tmp_path, 4)
    assert not (folder / "junk").exists() and not (tmp_path / ".tmp-step-000004").exists()


@pytest.mark.parametrize("pointer", ["step-000009\n", "step-000003\n", "", "../elsewhere\n"])
def test_latest_to_a_missing_or_incomplete_folder_falls_back(tmp_path, pointer):
    for step in (1, 2):
        save(tmp_path, step)
    (tmp_path / "step-000003").mkdir()  # incomplete: no state.json
    (tmp_path / "latest").write_text(pointer, encoding="utf-8")
    assert ckpt.find_latest(tmp_path) == tmp_path / "step-000002"


def test_resaving_the_same_step_replaces_it(tmp_path):
    first = ckpt.save_checkpoint(tmp_path, snapshot(3, seed=0))
    snap = snapshot(3, seed=99)
    snap.state["note"] = "second"
    again = ckpt.save_checkpoint(tmp_path, snap)
    assert again == first
    back = ckpt.load_checkpoint(again)
    assert back.state["note"] == "second"
    assert torch.equal(back.weights["proj.weight"], snap.weights["proj.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000003"]  # no trash left behind


# ---------------------------------------------------------------------------------------------- pruning and order


def test_save_prunes_to_keep_last_plus_best(tmp_path):
    for step in range(1, 7):
        save(tmp_path, step, keep_last=2, best="step-000002")
    assert names(ckpt.list_checkpoints(tmp_path)) == ["step-000002", "step-000005", "step-000006"]


def test_prune_keeps_last_n_and_the_named(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, keep_last=10)
    deleted = ckpt.prune(tmp_path, keep_last=2, keep={"step-000001"})
    assert deleted == ["step-000002", "step-000003"]
    assert names(ckpt.list_checkpoints(tmp_path)) == ["step-000001", "step-000004", "step-000005"]
    assert ckpt.prune(tmp_path, keep_last=2, keep={"step-000001"}) == []


@pytest.mark.parametrize("keep_last", [0, 1])
def test_prune_never_deletes_the_newest(tmp_path, keep_last):
    for step in range(1, 4):
        save(tmp_path, step, keep_last=10)
    ckpt.prune(tmp_path, keep_last=keep_last, keep=set())
    assert names(ckpt.list_checkpoints(tmp_path)) == ["step-000003"]
    assert ckpt.find_latest(tmp_path) == tmp_path / "step-000003"


def test_prune_leaves_incomplete_and_foreign_folders_alone(tmp_path):
    for step in range(1, 4):
        save(tmp_path, step, keep_last=10)
    (tmp_path / "step-000000").mkdir()  # incomplete: not ours to judge
    ckpt.prune(tmp_path, keep_last=1, keep=set())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000", "step-000003"]


def test_names_and_mid_step_order(tmp_path):
    assert ckpt.checkpoint_name(7) == "step-000007"
    assert ckpt.checkpoint_name(7, 2) == "step-000007-m02"
    assert ckpt.checkpoint_name(1234567) == "step-1234567"
    for step, micro in [(8, 0), (7, 2), (7, 0), (10, 0), (7, 11), (1234567, 0)]:
        save(tmp_path, step, micro, keep_last=10)
    # Numeric order, not string order: m11 after m02, 10 after 8, 7 digits after 6.
    assert names(ckpt.list_checkpoints(tmp_path)) == [
        "step-000007", "step-000007-m02", "step-000007-m11", "step-000008", "step-000010", "step-1234567"
    ]
    (tmp_path / "latest").unlink()
    assert ckpt.find_latest(tmp_path) == tmp_path / "step-1234567"


def test_mid_step_checkpoint_is_newer_than_its_step(tmp_path):
    save(tmp_path, 7, keep_last=1)
    save(tmp_path, 7, micro=2, keep_last=1)  # preempted after 2 micro-batches of step 8
    assert names(ckpt.list_checkpoints(tmp_path)) == ["step-000007-m02"]


# ---------------------------------------------------------------------------------------------- unreadable ones


def test_missing_rank_file_says_world_size(tmp_path):
    folder = save(tmp_path, 1)  # written by one process
    with pytest.raises(CheckpointError, match=r"no rank-1\.pt.*written by 1 process.*same number"):
        ckpt.load_checkpoint(folder, rank=1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights_raise_checkpoint_error(tmp_path, damage):
    folder = save(tmp_path, 1)
    path = folder / ckpt.WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a safetensors file at all", "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"step-000001: cannot read checkpoint"):
        ckpt.load_checkpoint(folder)


@pytest.mark.parametrize("filename", [ckpt.OPTIMIZER_FILE, "rank-0.pt"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_torch_files_raise_checkpoint_error(tmp_path, filename, damage):
    folder = save(tmp_path, 1)
    path = folder / filename
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x80\x02garbage", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint"):
        ckpt.load_checkpoint(folder)


def test_corrupt_state_json_and_missing_weights(tmp_path):
    folder = save(tmp_path, 1)
    (folder / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(folder)
    folder = save(tmp_path, 2)
    (folder / ckpt.STATE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="JSONDecodeError"):
        ckpt.load_checkpoint(folder)


def test_write_text_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "run.json"
    ckpt.write_text_atomic(target, json.dumps({"a": 1}))
    ckpt.write_text_atomic(target, "שלום\n")
    assert target.read_text(encoding="utf-8") == "שלום\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_resave_killed_between_its_renames_gets_its_old_copy_back(tmp_path):
    old = save(tmp_path, 3)
    os.replace(old, tmp_path / ".tmp-old-step-000003")  # the state right after the first of the two renames
    assert ckpt.clean_partial(tmp_path) == []
    assert ckpt.find_latest(tmp_path) == tmp_path / "step-000003"
    assert ckpt.load_checkpoint(tmp_path / "step-000003").state["step"] == 3


# ---------------------------------------------------------------------------------------------- shared run folders


class _Trap:
    """Unpickling this calls `open(marker, "w")`: the marker appearing means the pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("filename", [ckpt.OPTIMIZER_FILE, "rank-0.pt"])
def test_a_booby_trapped_pickle_is_refused_by_name_and_never_run(tmp_path, filename):
    folder = save(tmp_path, 1)
    marker = tmp_path / "PWNED"
    torch.save({"state": {}, "payload": _Trap(marker)}, folder / filename)
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint file {re.escape(filename)}.*never loads"):
        ckpt.load_checkpoint(folder)
    state, weights = ckpt.load_weights(folder)  # eval/export: safetensors and JSON only
    assert state["step"] == 1 and set(weights) == {"proj.weight", "proj.bias"}
    assert not marker.exists()


def test_save_refuses_state_that_weights_only_could_not_load(tmp_path):
    snap = snapshot(1)
    snap.rank_state["rng"]["numpy"] = np.random.get_state()  # the legacy tuple holds a numpy array
    with pytest.raises(AssertionError, match=r"rank-0\.pt\.rng\.numpy\[1\]: ndarray"):
        ckpt.save_checkpoint(tmp_path, snap)


def test_replace_folder_and_recovery_after_a_kill_between_renames(tmp_path):
    final, new = tmp_path / "out", tmp_path / ".tmp-new"
    final.mkdir()
    (final / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    ckpt.replace_folder(new, final)
    assert (final / "v").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    os.replace(final, tmp_path / ".tmp-old-out")  # killed after the first rename of a later replacement
    ckpt.recover_aside(final, lambda aside: False)  # not recognised as ours: left alone
    assert not final.exists()
    ckpt.recover_aside(final, lambda aside: (aside / "v").is_file())
    assert (final / "v").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
