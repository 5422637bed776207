"""Atomic training checkpoints: trainable state only, every RNG, the sampler position, written so that a crash at
any instant leaves either the previous checkpoint or the new one, never a half-written one that looks complete.

Layout of one checkpoint, `RUN/checkpoints/step-000200/` (or `step-000200-m03/` when saved by preemption in the
middle of a gradient accumulation, after micro-batch 3 of step 201):

    trainable.safetensors   every parameter trained so far (this phase and earlier ones), by full name;
                            LoRA adapters and the training-only CTC head included ("aux." prefix)
    optimizer.pt            the optimizer's state_dict (its param groups carry their parameter names)
    rank-0.pt …             per process: RNG states (python, numpy, torch, CUDA), sampler state, and the partial
                            gradients when saved mid-accumulation
    state.json              step, epoch, phase, micro-batch index, metrics.jsonl offset, recipe fingerprint,
                            base model, eval result. Written last: a folder without it is not a checkpoint.

Safety. A run folder may come from someone else, and unpickling runs code: the two `.pt` files hold only tensors
and plain Python values (RNG states as lists and tensors, see `capture_rng`) and are read with
`torch.load(weights_only=True)`, which refuses anything else; loading a model for eval/export
(`caspi.models.loading`) reads only state.json and the safetensors file and never opens a pickle.

Writing: everything goes to `checkpoints/.tmp-<name>/`, each file fsynced, then the folder is renamed into place and
the parent fsynced; `checkpoints/latest` (a one-line file naming the folder) is replaced atomically after that. Old
checkpoints are pruned only once the new one is in place (never a moment with none), keeping the last
`keep_last` plus the best by WER. Loading trusts `latest` only if its target is complete, else falls back to the
newest complete folder; leftover `.tmp-*` folders (a kill during a write) are removed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from caspi.data.cuts import write_text_atomic  # noqa: F401 - used here and by the loop as ckpt.write_text_atomic
from caspi.errors import CheckpointError
from caspi.folders import fsync_dir as _fsync_dir
from caspi.folders import fsync_file as _fsync_file

# The layout's read side (which folder is complete, newest, its state.json and tensors) lives with model loading,
# which eval, export and the audit use without importing training code. Training code and the checkpoint tests
# address the whole layout through this module, so the read side is part of its namespace too.
from caspi.models.loading import (  # noqa: F401 - find_latest, is_complete, load_weights: used as ckpt.<name>
    LATEST_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    find_latest,
    is_complete,
    list_checkpoints,
    load_weights,
    read_state,
    read_weights,
)

OPTIMIZER_FILE = "optimizer.pt"
# Fault injection for the crash tests: seconds to sleep after each file of a checkpoint write, so a test can
# SIGKILL the trainer in the middle of one. Never set in normal use.
_SLOW_WRITE_ENV = "CASPI_TEST_SLOW_CHECKPOINT_S"


def checkpoint_name(step: int, micro: int = 0) -> str:
    """`step-000200` after optimizer step 200; `step-000200-m03` after 3 micro-batches of step 201."""
    return f"step-{step:06d}" + (f"-m{micro:02d}" if micro else "")


def _pause_for_tests() -> None:
    delay = os.environ.get(_SLOW_WRITE_ENV)
    if delay:
        time.sleep(float(delay))


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values only, so `torch.load(weights_only=True)` reads them:
    python's as [version, [625 ints], gauss or None], numpy's legacy generator as its dict form with the key as a
    list of 624 ints, torch's as a uint8 tensor, CUDA's as a list of uint8 tensors (None without CUDA)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "state": {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"])},
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set every RNG from `capture_rng`'s output (CUDA's only where CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])  # numpy accepts the dict form; the key list becomes uint32 again
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_plain(value: Any, where: str) -> None:
    """Internal invariant: what goes into a .pt file is what `weights_only=True` loads back (tensors, plain
    values, containers of them); anything else would save fine and make the checkpoint unloadable at resume."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r} of type {type(k).__name__}"
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    else:
        # Exact types: numpy scalars subclass float/int but unpickle through numpy, which weights_only refuses.
        plain = value is None or type(value) in (bool, int, float, str)
        assert plain or isinstance(value, (torch.Tensor, torch.Size)), (
            f"{where}: {type(value).__name__} cannot be loaded with weights_only=True")


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` at `final` (same parent) so that a crash at any instant leaves a complete
    copy: with no `final`, one rename; otherwise the old one is renamed aside to `.tmp-old-<name>` first, the new
    one renamed in, and only then the old one deleted. A kill between the two renames leaves the old copy under
    `.tmp-old-<name>`: `clean_partial` (checkpoints) and `recover_aside` (anything else) rename it back."""
    parent = final.parent
    if final.exists():
        trash = parent / f".tmp-old-{final.name}"
        assert not trash.exists(), f"{trash} left over: recover_aside/clean_partial must run first"
        os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(parent)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _fsync_dir(parent)


def recover_aside(final: Path, is_ours: Callable[[Path], bool]) -> None:
    """Undo a `replace_folder` killed between its renames: when `final` is missing and `.tmp-old-<name>` is a
    complete copy (`is_ours`), rename it back; when both exist the swap had finished and the aside copy goes.
    An aside folder that `is_ours` does not recognise is left alone."""
    trash = final.parent / f".tmp-old-{final.name}"
    if not trash.is_dir() or not is_ours(trash):
        return
    if final.exists():
        shutil.rmtree(trash)
    else:
        os.replace(trash, final)
        _fsync_dir(final.parent)


def clean_partial(root: Path) -> list[str]:
    """Remove `.tmp-*` folders and files left by a write that was killed; returns their names.

    One leftover is put back instead: `.tmp-old-<name>` is a complete checkpoint moved aside by a re-save of the
    same step; if the kill came before the new copy took its place, the old one is renamed back."""
    removed = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            original = root / p.name.removeprefix(".tmp-old-")
            if p.name.startswith(".tmp-old-") and not original.exists() and (p / STATE_FILE).is_file():
                os.replace(p, original)
                continue
            if p.name.startswith(".tmp-") or (p.name.startswith(f".{LATEST_FILE}.tmp-")):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
    return removed


@dataclass
class Snapshot:
    """Everything one checkpoint holds, in memory. `rank_states[r]` is process r's (RNG, sampler, grads)."""

    state: dict[str, Any]  # JSON-able: step, epoch, phase, micro, metrics_offset, fingerprint, ...
    weights: dict[str, torch.Tensor]  # trainable parameters by name
    optimizer: dict[str, Any]
    rank_state: dict[str, Any]  # this process's part


def save_checkpoint(
    root: Path,
    snapshot: Snapshot,
    *,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int = 3,
    best: str | None = None,
) -> Path:
    """Write `snapshot` atomically as `root/<name>` and point `latest` at it; prune old checkpoints.

    Every rank calls this (collectively: `barrier` synchronises them); rank 0 writes the shared files and each rank
    its own `rank-<r>.pt`. The folder name comes from `state["step"]` and `state["micro"]`. `best` names the
    checkpoint folder to keep besides the last `keep_last`. Returns the final folder.
    """
    name = checkpoint_name(snapshot.state["step"], snapshot.state.get("micro", 0))
    final = root / name
    tmp = root / f".tmp-{name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    _check_plain(snapshot.rank_state, f"rank-{rank}.pt")
    torch.save(snapshot.rank_state, tmp / f"rank-{rank}.pt")
    _fsync_file(tmp / f"rank-{rank}.pt")
    barrier()
    if rank == 0:
        missing = [r for r in range(world_size) if not (tmp / f"rank-{r}.pt").is_file()]
        assert not missing, f"rank files missing from {tmp}: {missing}"
        # safetensors refuses tensors that share storage or are non-contiguous views: save plain copies (one copy:
        # `.cpu()` of a CUDA tensor already is one).
        weights = {k: v.detach().contiguous() for k, v in snapshot.weights.items()}
        save_file({k: v.cpu() if v.is_cuda else v.clone() for k, v in weights.items()}, tmp / WEIGHTS_FILE)
        _fsync_file(tmp / WEIGHTS_FILE)
        _pause_for_tests()
        _check_plain(snapshot.optimizer, OPTIMIZER_FILE)
        torch.save(snapshot.optimizer, tmp / OPTIMIZER_FILE)
        _fsync_file(tmp / OPTIMIZER_FILE)
        _pause_for_tests()
        state = dict(snapshot.state, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), world_size=world_size)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        _fsync_file(tmp / STATE_FILE)
        _fsync_dir(tmp)
        # The same name again (a resumed run re-saving a step) replaces the old copy without a moment with none.
        replace_folder(tmp, final)
        write_text_atomic(root / LATEST_FILE, name + "\n")
        prune(root, keep_last=keep_last, keep={name, best} - {None})
    barrier()
    return final


def prune(root: Path, keep_last: int, keep: set[str]) -> list[str]:
    """Delete complete checkpoints except the newest `keep_last` (at least the newest one) and those named in
    `keep`; returns the deleted names, oldest first."""
    found = list_checkpoints(root)
    # max(…, 1): the newest always survives (`found[-0:]` would also be the whole list, keeping everything).
    survivors = {p.name for p in found[-max(keep_last, 1):]} | keep
    deleted = []
    for p in found:
        if p.name not in survivors:
            shutil.rmtree(p)
            deleted.append(p.name)
    return deleted


def _read_pickle(path: Path) -> Any:
    """A .pt file of ours, read with weights_only=True: tensors and plain values only, so a file planted in a
    shared run folder cannot run code (the unpickler refuses any other global)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged or foreign bytes make pickle (UnpicklingError, EOFError,
        # or whatever a garbled opcode stream triggers) and torch's zip reader (RuntimeError) raise unrelated types;
        # every one means the same thing here.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path.parent}: cannot read checkpoint file {path.name} ({type(exc).__name__}: {first}); it is "
            "damaged, from an older Caspi (RNG states pickled as numpy objects), or holds objects other than "
            "tensors and plain values, which Caspi never loads (unpickling can run code)"
        ) from None


def load_checkpoint(folder: Path, rank: int = 0) -> Snapshot:
    """Read a checkpoint folder written by `save_checkpoint`, for process `rank` (resume)."""
    state = read_state(folder)
    saved_world = state.get("world_size", 1)
    rank_file = folder / f"rank-{rank}.pt"
    if not rank_file.is_file():
        raise CheckpointError(
            f"{folder}: no {rank_file.name}; the checkpoint was written by {saved_world} process(es) and exact "
            "resume needs the same number"
        )
    weights = read_weights(folder)
    optimizer = _read_pickle(folder / OPTIMIZER_FILE)
    rank_state = _read_pickle(rank_file)
    return Snapshot(state=state, weights=weights, optimizer=optimizer, rank_state=rank_state)
