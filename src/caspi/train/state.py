"""The training state: the counters of a run (`Progress`) and what follows from them (the phase in force, the
learning rate), what a checkpoint holds and how a resume takes it back, and run.json, the record of what the run
trains on.

    progress = Progress()                                     # step 0, epoch 1, nothing trained yet
    factor = lr_factor(recipe, progress, steps_per_epoch)     # of each group's peak learning rate, this step
    snap = snapshot(progress, model=..., optimizer=..., ...)  # → checkpoint.save_checkpoint
    check_resumable(snap.state, ...)                          # resume: same world size, same recipe
    progress = Progress.from_state(snap.state)
    record = check_run_json(run_dir, recipe, ...)             # first start: pin base and manifests; later: check

A checkpoint (layout in `caspi.train.checkpoint`) holds: in state.json, `Progress.to_state()` followed by the run's
identity (metrics.jsonl offset, wandb id, recipe fingerprint, pinned base, manifests' sha256); in
trainable.safetensors, every parameter trained so far and the CTC head (`CTC_HEAD_PREFIX`); the optimizer's
state_dict; in rank-<r>.pt, this process's RNGs and sampler position and, when saved between two micro-batches of
a step, its partial gradients and step loss.

run.json is written once, at the first start, by rank 0: the recipe and its fingerprint, the pinned base
(`caspi.models.loading.pin_base`; tiny models are built here, once, into RUN/base), the manifests' sha256, the gate
decision, versions. Every later start checks the recipe and the manifests against it; one that restores a
checkpoint appends {"step", "checkpoint", "at"} to its `resumes` list.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet

from caspi import __version__
from caspi.config import PhaseConfig, Recipe
from caspi.data.cuts import cut_text, file_sha256
from caspi.data.sampling import restore_sampler, sampler_state
from caspi.errors import CheckpointError
from caspi.models.families import ModelFamily
from caspi.models.loading import AUX_PREFIX, RUN_FILE, pin_base
from caspi.train import checkpoint as ckpt
from caspi.train import distributed
from caspi.train.distributed import World

CTC_HEAD = "ctc_head."  # the CTC head's key under AUX_PREFIX (`load_trained(..., aux={CTC_HEAD: head})`)
CTC_HEAD_PREFIX = AUX_PREFIX + CTC_HEAD  # names of the CTC head's tensors in checkpoints and optimizer groups


@dataclass
class Progress:
    """Where a run stands: every counter the loop keeps, all of them saved in state.json (in this order)."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # the epoch in progress, 1-based (epochs + 1 once the last one ran out of batches)
    micro: int = 0  # micro-batches of the step in progress done; 0 at a step boundary
    consumed: int = 0  # batches of this epoch taken from this process's sampler
    phase: str | None = None  # the unfreeze phase in force, by name; None before the first is entered
    phase_start_step: int = 0  # the step the phase began at: its warmup and decay count from there
    chunks: int = 1  # pieces each micro-batch runs as after CUDA out-of-memory (doubles each time)
    bad_steps: int = 0  # optimizer steps in a row skipped for a non-finite loss or gradient
    best: tuple[float, str] | None = None  # (WER, checkpoint name) of the best eval so far
    last_loss: float | None = None  # of the last optimizer step that updated the weights
    trained: set[str] = field(default_factory=set)  # every parameter trained so far, all phases: what checkpoints hold

    def to_state(self) -> dict[str, Any]:
        """The JSON form state.json holds."""
        return {"step": self.step, "epoch": self.epoch, "micro": self.micro, "consumed": self.consumed,
                "phase": self.phase, "phase_start_step": self.phase_start_step, "chunks": self.chunks,
                "bad_steps": self.bad_steps, "best": list(self.best) if self.best else None,
                "last_loss": self.last_loss, "trained": sorted(self.trained)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        """The counters of a checkpoint's state.json (other keys are ignored)."""
        return cls(step=state["step"], epoch=state["epoch"], micro=state["micro"], consumed=state["consumed"],
                   phase=state["phase"], phase_start_step=state["phase_start_step"], chunks=state["chunks"],
                   bad_steps=state["bad_steps"], best=tuple(state["best"]) if state["best"] else None,
                   last_loss=state["last_loss"], trained=set(state["trained"]))


# ---------------------------------------------------------------------------------------------------------------
# What follows from the position: the phase in force and the learning rate


def phase_for(recipe: Recipe, epoch: int) -> PhaseConfig:
    """The unfreeze phase in force in `epoch` (1-based): the last one started by then."""
    return [p for p in recipe.unfreeze.phases if p.start_epoch <= epoch][-1]


def phase_named(recipe: Recipe, name: str) -> PhaseConfig:
    return next(p for p in recipe.unfreeze.phases if p.name == name)


def lr_factor(recipe: Recipe, progress: Progress, steps_per_epoch: int) -> float:
    """The fraction of each group's peak learning rate for the step after `progress.step`: linear warmup over
    `train.warmup_steps` from the start of the phase, then cosine/linear decay to zero at the phase's end (or
    constant). A pure function of the position, so a resumed run continues the same schedule."""
    t, phases = recipe.train, recipe.unfreeze.phases
    s = progress.step - progress.phase_start_step  # steps into this phase
    i = [p.name for p in phases].index(progress.phase)
    end = phases[i + 1].start_epoch if i + 1 < len(phases) else t.epochs + 1
    total = max(1, (end - phases[i].start_epoch) * steps_per_epoch)  # steps in this phase
    if t.warmup_steps and s < t.warmup_steps:
        return (s + 1) / t.warmup_steps
    done = min(1.0, (s - t.warmup_steps) / max(1, total - t.warmup_steps))  # fraction of the decay behind us
    return {"cosine": 0.5 * (1 + math.cos(math.pi * done)), "linear": 1 - done, "constant": 1.0}[t.schedule]


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: what goes in, what comes back


def snapshot(progress: Progress, *, model: torch.nn.Module, ctc_head: torch.nn.Module | None,
             named_trainable: list[tuple[str, torch.Tensor]], optimizer: torch.optim.Optimizer, sampler,
             step_loss: torch.Tensor, run: dict[str, Any]) -> ckpt.Snapshot:
    """This process's checkpoint of the run. `named_trainable`: the phase's trainable tensors by checkpoint name
    (their gradients are saved between two micro-batches of a step, `progress.micro` > 0); `step_loss`: (loss, ce,
    ctc) ÷ accumulation of the step's micro-batches so far; `run`: metrics_offset, wandb_id, fingerprint, base,
    manifests, as state.json records them after the counters."""
    params = dict(model.named_parameters())
    weights = {n: params[n] for n in sorted(progress.trained)}
    if ctc_head is not None:
        weights.update({CTC_HEAD_PREFIX + n: p for n, p in ctc_head.named_parameters()})
    rank_state = {
        "rng": ckpt.capture_rng(),  # as tensors and lists: the file is read back with weights_only=True
        "sampler": sampler_state(sampler, progress.consumed),
        # Mid-accumulation (preemption): this process's partial gradients, unsynchronised under DDP.
        "grads": {n: p.grad.detach().cpu().clone() for n, p in named_trainable if p.grad is not None}
        if progress.micro else {},
        "pending_loss": step_loss.clone(),
    }
    return ckpt.Snapshot(state={**progress.to_state(), **run}, weights=weights, optimizer=optimizer.state_dict(),
                         rank_state=rank_state)


def check_resumable(state: dict[str, Any], *, world_size: int, fingerprint: str, checkpoint: Path) -> None:
    """CheckpointError unless the checkpoint was saved by as many processes, under the same recipe."""
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(
            f"{checkpoint} was written by {state.get('world_size', 1)} process(es), this run has "
            f"{world_size}: an exact resume needs the same number (the sampler position is per process)"
        )
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(f"{checkpoint.parent}: the checkpoint was made with another recipe; resume with the "
                              "same recipe and overrides, or use a new --out")


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any], *, phase: str, where: Path) -> None:
    """Load a checkpoint's optimizer state into the optimizer of its phase, whose groups must be the saved ones."""
    saved_groups = [(g["name"], g["param_names"]) for g in saved["param_groups"]]
    groups = [(g["name"], g["param_names"]) for g in optimizer.param_groups]
    if saved_groups != groups:
        raise CheckpointError(f"{where}: optimizer groups in the checkpoint differ from the recipe's phase {phase!r}")
    optimizer.load_state_dict(saved)


def restore_position(rank_state: dict[str, Any], sampler, named_trainable: list[tuple[str, torch.Tensor]]
                     ) -> torch.Tensor:
    """Put this process's sampler back where it was and the partial gradients of a step interrupted between two
    micro-batches back on the tensors; returns that step's loss so far ((3,): zeros at a step boundary)."""
    restore_sampler(sampler, rank_state["sampler"])
    named = dict(named_trainable)
    for name, grad in rank_state["grads"].items():
        named[name].grad = grad.to(named[name].device, named[name].dtype)
    return rank_state["pending_loss"].clone()


# ---------------------------------------------------------------------------------------------------------------
# run.json


@dataclass
class RunRecord:
    """What run.json says the run trains on, as checked at this start."""

    base: dict[str, Any] | None  # the pinned base (`pin_base`); None for a run from before pinning
    manifests: dict[str, dict]  # {"train": {"path", "sha256"}, "eval": ...} of the manifests now
    data_change: str | None = None  # --new-data accepted a changed manifest: the event to log
    restart_epoch: bool = False  # --new-data on a changed train manifest: the saved sampler position is dropped


def check_run_json(run_dir: Path, recipe: Recipe, *, world: World, resume: ckpt.Snapshot | None,
                   resume_path: Path | None, new_data: bool, gate, overrides: list[str], family: ModelFamily,
                   train_cuts: CutSet) -> RunRecord:
    """First start: pin the base model (`pin_run_base`) and the manifests' sha256, write run.json and recipe.yaml
    (rank 0; every rank then loads the base it pinned). Later starts: the recipe must be the one stored, the
    manifests the ones the checkpoint was trained on (`_check_manifests`); the pinned base is checked when
    `caspi.models.loading.build_model` loads it."""
    meta_path = run_dir / RUN_FILE
    started_before = meta_path.is_file()
    distributed.barrier(world)  # every rank has looked before rank 0 writes run.json
    fingerprint = recipe.fingerprint()
    manifests = manifest_hashes(recipe)
    if started_before:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["fingerprint"] != fingerprint:
            changed = sorted(diff_keys(meta.get("recipe", {}), recipe.to_dict()))
            raise CheckpointError(
                f"{run_dir} holds a run of another recipe (changed: {', '.join(changed) or '?'}); resume "
                "with the same recipe and overrides, or train into a new --out folder"
            )
        record = RunRecord(base=meta.get("base"), manifests=manifests)  # base None: `load_base` warns
        _check_manifests(record, meta, meta_path, world=world, resume=resume, resume_path=resume_path,
                         new_data=new_data)
        if resume is not None and world.is_main:
            # metrics.jsonl is cut back to the checkpoint on resume (it reads as one run): the resumes live here,
            # for `caspi report` to mark on the curves.
            meta.setdefault("resumes", []).append({"step": resume.state["step"], "checkpoint": resume_path.name,
                                                   "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            ckpt.write_text_atomic(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))
        return record
    if resume is not None:
        raise CheckpointError(f"{run_dir}: checkpoints without run.json; not a Caspi run folder")
    if world.is_main:
        import transformers

        meta = {
            "fingerprint": fingerprint, "recipe_name": recipe.name, "overrides": overrides,
            "recipe": recipe.to_dict(), "world_size": world.size, "gate": gate.to_dict() if gate else None,
            "base": pin_run_base(run_dir, recipe, family, train_cuts), "manifests": manifests,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "caspi": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        ckpt.write_text_atomic(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))
        ckpt.write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    distributed.barrier(world)
    # Every rank loads the base rank 0 pinned (a hub branch could move between two resolutions).
    return RunRecord(base=json.loads(meta_path.read_text(encoding="utf-8"))["base"], manifests=manifests)


def manifest_hashes(recipe: Recipe) -> dict[str, dict]:
    """{"train": {"path", "sha256"}, "eval": ...} of the recipe's manifests (eval only when it exists)."""
    d = recipe.data
    return {role: {"path": str(path), "sha256": file_sha256(path)}
            for role, path in (("train", d.train_manifest), ("eval", d.eval_manifest))
            if path and Path(path).is_file()}


def _check_manifests(record: RunRecord, meta: dict, meta_path: Path, *, world: World, resume: ckpt.Snapshot | None,
                     resume_path: Path | None, new_data: bool) -> None:
    """A resume must read the manifests the checkpoint was trained on: the saved sampler position indexes the
    train manifest's batches, and best-by-WER compares evals on the eval manifest. A changed one is refused,
    naming both hashes, unless `--new-data`: then the current epoch restarts on the new data (sampler position
    and the partial step dropped; the step count and LR schedule go on), run.json records the change and an
    event is logged. Before any checkpoint a changed manifest is simply recorded."""
    recorded = (resume.state.get("manifests") if resume is not None else None) or meta.get("manifests")
    if recorded is None:
        return  # a run from before manifests were recorded
    now = record.manifests
    changed = {role: (recorded.get(role, {}).get("sha256"), now.get(role, {}).get("sha256"))
               for role in ("train", "eval")}
    changed = {role: pair for role, pair in changed.items() if pair[0] != pair[1]}
    if not changed:
        return
    if resume is not None and not new_data:
        role, (old, new) = next(iter(changed.items()))
        path = now.get(role, recorded.get(role, {})).get("path")
        raise CheckpointError(
            f"{path}: the {role} manifest changed since checkpoint {resume_path.name} was saved (sha256 "
            f"{old} then, {new} now); resuming would continue from a sampler position in other data. Restore "
            f"that manifest to resume exactly, or pass --new-data to restart epoch {resume.state['epoch']} "
            "on the new one"
        )
    if resume is not None:
        record.restart_epoch = "train" in changed
        record.data_change = (
            f"--new-data: {' and '.join(changed)} manifest(s) changed since {resume_path.name} ("
            + "; ".join(f"{role} sha256 {old} → {new}" for role, (old, new) in changed.items()) + ")"
            + (f"; epoch {resume.state['epoch']} restarts on the new data" if record.restart_epoch else "")
        )
    if world.is_main:
        meta["manifests"] = now
        meta.setdefault("data_changes", []).append({
            "step": resume.state["step"] if resume is not None else 0,
            "changed": {role: {"old": old, "new": new} for role, (old, new) in changed.items()},
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        ckpt.write_text_atomic(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))
    distributed.barrier(world)


def pin_run_base(run_dir: Path, recipe: Recipe, family: ModelFamily, train_cuts: CutSet) -> dict[str, Any]:
    """The base this run trains on, as run.json records it (`caspi.models.loading.pin_base`). Tiny: build the
    random model once and save it under RUN/base (a resume and `caspi export` load the same files), pinned by
    its content hash. Otherwise the hub id's commit sha or the local folder's content hash. Rank 0 only."""
    m = recipe.model
    if not m.tiny:
        return pin_base(m.name_or_path, m.revision)
    base_dir = run_dir / "base"
    if not (base_dir / "config.json").is_file():
        texts = sorted({cut_text(c) for c in train_cuts})
        # He init of the audio front end: without it a model trained from scratch ignores the audio
        # (REFERENCE.md, "Default init starves the decoder of audio"). Whisper's init needs no fix.
        options = {"audio_init": "he"} if family.name == "qwen3_asr" else {}
        model, processor = family.tiny(texts, seed=recipe.train.seed, size=m.tiny, language=m.language, **options)
        tmp = run_dir / ".tmp-base"
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        os.replace(tmp, base_dir)
    return {**pin_base("base", in_run=True, folder=base_dir), "tiny": m.tiny}


def diff_keys(a, b, prefix: str = "") -> set[str]:
    """Dotted paths of the leaves where two nested dicts differ (`{"train": {"lr": 1}}` vs 2: {"train.lr"})."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
