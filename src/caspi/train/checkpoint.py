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

Writing: everything goes to `checkpoints/.tmp-<name>/`, each file fsynced, then the folder is renamed into place and
the parent fsynced; `checkpoints/latest` (a one-line file naming the folder) is replaced atomically after that. Old
checkpoints are pruned only once the new one is in place (never a moment with none), keeping the last
`keep_last` plus the best by WER. Loading trusts `latest` only if its target is complete, else falls back to the
newest complete folder; leftover `.tmp-*` folders (a kill during a write) are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from caspi.errors import CheckpointError

STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
LATEST_FILE = "latest"
_NAME = re.compile(r"^step-(\d{6,})(?:-m(\d+))?$")
# Fault injection for the crash tests: seconds to sleep after each file of a checkpoint write, so a test can
# SIGKILL the trainer in the middle of one. Never set in normal use.
_SLOW_WRITE_ENV = "CASPI_TEST_SLOW_CHECKPOINT_S"


def checkpoint_name(step: int, micro: int = 0) -> str:
    """`step-000200` after optimizer step 200; `step-000200-m03` after 3 micro-batches of step 201."""
    return f"step-{step:06d}" + (f"-m{micro:02d}" if micro else "")


def _order(name: str) -> tuple[int, int]:
    m = _NAME.match(name)
    assert m is not None, name
    return int(m.group(1)), int(m.group(2) or 0)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (temp file in the same folder, fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _pause_for_tests() -> None:
    delay = os.environ.get(_SLOW_WRITE_ENV)
    if delay:
        time.sleep(float(delay))


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and _NAME.match(folder.name) is not None and (folder / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: _order(p.name))


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


def find_latest(root: Path) -> Path | None:
    """The checkpoint to resume from: `latest` if it names a complete folder, else the newest complete one."""
    pointer = root / LATEST_FILE
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if is_complete(target):
            return target
    found = list_checkpoints(root)
    return found[-1] if found else None


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
        torch.save(snapshot.optimizer, tmp / OPTIMIZER_FILE)
        _fsync_file(tmp / OPTIMIZER_FILE)
        _pause_for_tests()
        state = dict(snapshot.state, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), world_size=world_size)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        _fsync_file(tmp / STATE_FILE)
        _fsync_dir(tmp)
        if final.exists():
            # Same name again (a resumed run re-saving a step): move the old one aside, then replace it.
            trash = root / f".tmp-old-{name}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
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


def load_checkpoint(folder: Path, rank: int = 0) -> Snapshot:
    """Read a checkpoint folder written by `save_checkpoint`, for process `rank`."""
    if not is_complete(folder):
        raise CheckpointError(f"{folder}: not a complete checkpoint (no {STATE_FILE})")
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        saved_world = state.get("world_size", 1)
        rank_file = folder / f"rank-{rank}.pt"
        if not rank_file.is_file():
            raise CheckpointError(
                f"{folder}: no {rank_file.name}; the checkpoint was written by {saved_world} process(es) and exact "
                "resume needs the same number"
            )
        weights = load_file(folder / WEIGHTS_FILE)
        # Our own files (RNG states hold numpy arrays and tuples): not loadable with weights_only.
        optimizer = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged bytes make safetensors (SafetensorError), pickle
        # (UnpicklingError, EOFError, or whatever a garbled opcode stream triggers) and torch's zip reader
        # (RuntimeError) raise unrelated types; every one means the same thing here.
        raise CheckpointError(f"{folder}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    return Snapshot(state=state, weights=weights, optimizer=optimizer, rank_state=rank_state)
