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
(`caspi.models.loading.pin_base`; tiny models are built here, once, into RUN/base, and so is a local Round-1 model
named by `model.init_from`), where the starting weights came from (`init_from`), the architecture's base
(`architecture`), the manifests' sha256, the gate decision, versions. Every later start checks the recipe and the
manifests against it; one that restores a checkpoint appends {"step", "checkpoint", "at"} to its `resumes` list.

`base` is always what every later load grafts the trained tensors onto (`load_pinned`), so resume, eval, export
and the audit's scorers read it alone; `init_from` and `architecture` are provenance, for people and reports:

    "base": {"kind": "folder", "name_or_path": "base", "in_run": true, "sha256": "…"},   # RUN/base: Round 1's copy
    "init_from": {"spec": "runs/round1", "kind": "caspi_run", "run": "/abs/runs/round1",
                  "checkpoint": "step-000120", "step": 120, "weights_sha256": "…", "base": {…round 1's base pin…}},
    "architecture": {"family": "qwen3_asr", "tiny": "xs"}   # or name_or_path, requested_revision, revision
"""

from __future__ import annotations

import json
import math
import shutil
import sys
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
from caspi.errors import CheckpointError, ConfigError
from caspi.folders import fsync_tree
from caspi.models.convert import detect_layout, folder_sha256, read_config
from caspi.models.families import ModelFamily, family_names, from_pretrained_or_raise, get_family, is_local_path
from caspi.models.loading import (
    AUX_PREFIX,
    RUN_FILE,
    WEIGHTS_FILE,
    cached_hub_revision,
    is_complete,
    is_commit_sha,
    load_model,
    pin_base,
    read_run,
    read_state,
    resolve_hub_revision,
    resolve_run,
)
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
    fingerprint: str  # the run's recipe fingerprint, as run.json and its checkpoints record it
    data_change: str | None = None  # --new-data accepted a changed manifest: the event to log
    restart_epoch: bool = False  # --new-data on a changed train manifest: the saved sampler position is dropped


def check_run_json(run_dir: Path, recipe: Recipe, *, world: World, resume: ckpt.Snapshot | None,
                   resume_path: Path | None, new_data: bool, gate, overrides: list[str], family: ModelFamily,
                   train_cuts: CutSet) -> RunRecord:
    """First start: pin the base model (`pin_run_base`) and the manifests' sha256, write run.json and recipe.yaml
    (rank 0; every rank then loads the base it pinned). Later starts: the recipe must be the one stored (fields a
    newer Caspi added, at their defaults, do not count: `added_at_default`; the run keeps its fingerprint), the
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
            added = added_at_default(meta.get("recipe"), recipe)
            if added is None or recipe.fingerprint(without=added) != meta["fingerprint"]:
                changed = sorted(diff_keys(meta.get("recipe", {}), recipe.to_dict()))
                raise CheckpointError(
                    f"{run_dir} holds a run of another recipe (changed: {', '.join(changed) or '?'}); resume "
                    "with the same recipe and overrides, or train into a new --out folder"
                )
            if world.is_main:
                print(f"caspi: {run_dir} was started by a Caspi without the recipe fields {', '.join(added)}; they "
                      "hold their defaults here, so it is the same recipe", file=sys.stderr)
        # base None: `load_base` warns
        record = RunRecord(base=meta.get("base"), manifests=manifests, fingerprint=meta["fingerprint"])
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

        base, init_from = pin_run_base(run_dir, recipe, family, train_cuts)
        meta = {
            "fingerprint": fingerprint, "recipe_name": recipe.name, "overrides": overrides,
            "recipe": recipe.to_dict(), "world_size": world.size, "gate": gate.to_dict() if gate else None,
            "base": base, "init_from": init_from, "architecture": architecture_record(recipe, base),
            "manifests": manifests,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "caspi": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        ckpt.write_text_atomic(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))
        ckpt.write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    distributed.barrier(world)
    # Every rank loads the base rank 0 pinned (a hub branch could move between two resolutions).
    return RunRecord(base=json.loads(meta_path.read_text(encoding="utf-8"))["base"], manifests=manifests,
                     fingerprint=fingerprint)


def added_at_default(stored: dict | None, recipe: Recipe) -> list[str] | None:
    """The dotted recipe fields that `recipe` has and the resolved recipe `stored` (run.json's, written by an older
    Caspi) lacks, when each of them holds the schema's default: a field added by a newer Caspi, which the user
    cannot have set; None when one of them does not (the user set it: another recipe)."""
    if not isinstance(stored, dict):
        return None
    added: list[str] = []
    defaults = Recipe(name=recipe.name).to_dict()

    def walk(cur: dict, old: dict, default, prefix: str) -> bool:
        for key, value in cur.items():
            sub = default.get(key, _MISSING) if isinstance(default, dict) else _MISSING
            if key not in old:
                if sub is _MISSING or value != sub:
                    return False
                added.append(prefix + key)
            elif isinstance(value, dict) and isinstance(old[key], dict):
                if not walk(value, old[key], sub if isinstance(sub, dict) else {}, f"{prefix}{key}."):
                    return False
        return True

    return added if walk(recipe.to_dict(), stored, defaults, "") else None


_MISSING = object()


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


def pin_run_base(run_dir: Path, recipe: Recipe, family: ModelFamily, train_cuts: CutSet
                 ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(base, init_from) of this run as run.json records them. Rank 0, first start only.

    `base` is what every later load grafts the trained tensors onto (`caspi.models.loading.pin_base`):
    - `model.init_from` a local folder (a Caspi run or checkpoint, any from_pretrained folder in any layout): that
      model, loaded as `load_model` loads it (LoRA merged, original layout converted) in `model.dtype`, saved with
      its processor into RUN/base and pinned there by content hash, so resume, eval and export never need the
      Round-1 folder again; `model.init_from` a hub id: that id at the commit `model.init_revision` resolves to;
    - else tiny: the random model built once into RUN/base; else `model.name_or_path` (hub commit or folder hash).
    `init_from` is the provenance of the starting weights (`init_from_record`), None without `model.init_from`.
    With `model.init_from` no tiny model is built: the Round-1 model brings its own tokenizer, which a tokenizer
    made from this run's texts would not match."""
    m = recipe.model
    if m.init_from is not None:
        return _pin_init_from(run_dir, recipe, family)
    if not m.tiny:
        return pin_base(m.name_or_path, m.revision), None
    base_dir = run_dir / "base"
    if not (base_dir / "config.json").is_file():
        texts = sorted({cut_text(c) for c in train_cuts})
        # He init of the audio front end: without it a model trained from scratch ignores the audio
        # (REFERENCE.md, "Default init starves the decoder of audio"). Whisper's init needs no fix.
        options = {"audio_init": "he"} if family.name == "qwen3_asr" else {}
        model, processor = family.tiny(texts, seed=recipe.train.seed, size=m.tiny, language=m.language, **options)
        _save_in_run(model, processor, base_dir)
    return {**pin_base("base", in_run=True, folder=base_dir), "tiny": m.tiny}, None


def _pin_init_from(run_dir: Path, recipe: Recipe, family: ModelFamily) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base, init_from) for `model.init_from` (`pin_run_base`). Everything that can be refused without loading
    weights is checked first: the path exists and is a model, its family is the recipe's."""
    m = recipe.model
    spec = m.init_from
    if not is_local_path(spec):
        try:
            base = pin_base(spec, m.init_revision)
        except CheckpointError as exc:
            raise CheckpointError(f"model.init_from: {spec!r} is no local folder, and as a hub id: {exc}; expected "
                                  f"{_INIT_FROM_KINDS}") from None
        _check_init_family(_hub_family(spec, base["revision"]), family, spec)
        return base, {"spec": spec, "kind": "hub", "revision": base["revision"]}
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"model.init_from: {spec!r} does not exist; expected {_INIT_FROM_KINDS}")
    if m.init_revision is not None:
        raise ConfigError(f"model.init_revision: {m.init_revision!r} is a hub revision, but model.init_from "
                          f"{spec!r} is a local folder; drop model.init_revision")
    record = init_from_record(path, spec)
    _check_init_family(record.pop("family"), family, spec)
    # A trainer checkpoint of a run started from a hub id lacks the processor files (Qwen3-ASR issues #47, #104):
    # the recipe's architecture base is the model that run started from, so its processor is the one to take.
    processor_from = m.name_or_path if record.get("layout") == "trainer-checkpoint" and not m.tiny else None
    model, processor, loaded = load_model(path, dtype=getattr(torch, m.dtype), processor_from=processor_from)
    _check_init_family(loaded.name, family, spec)
    base_dir = run_dir / "base"
    _save_in_run(model, processor, base_dir)
    print(f"caspi: model.init_from {spec}: Round-1 weights copied into {base_dir} ({m.dtype})", file=sys.stderr)
    return pin_base("base", in_run=True, folder=base_dir), record


_INIT_FROM_KINDS = ("a Caspi run or checkpoint folder, an exported or other from_pretrained model folder (native, "
                    "the original qwen-asr layout or an HF Trainer checkpoint-N/), or a hub id")


def init_from_record(path: Path, spec: str) -> dict[str, Any]:
    """The provenance of a local `model.init_from`, plus its model family under "family" (for the caller to check
    and drop). A Caspi run or checkpoint: {"spec", "kind": "caspi_run", "run", "checkpoint", "step",
    "weights_sha256" (of its trainable.safetensors), "base" (that run's own pin)}; any other model folder: {"spec",
    "kind": "folder", "path", "layout" (`detect_layout`), "sha256" (`folder_sha256` of the folder as read)}.
    CheckpointError naming the path when it is neither."""
    if (path / RUN_FILE).is_file() or is_complete(path):
        run_dir, folder = resolve_run(path)
        meta, r1 = read_run(run_dir)
        state = read_state(folder)
        return {"spec": spec, "kind": "caspi_run", "run": str(run_dir.resolve()), "checkpoint": folder.name,
                "step": state.get("step"), "weights_sha256": file_sha256(folder / WEIGHTS_FILE),
                "base": meta.get("base"), "family": r1.model.family}
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"model.init_from: {spec!r} is not a model folder (no config.json, no run.json); "
                              f"expected {_INIT_FROM_KINDS}")
    config = read_config(path)
    # The original layout nests everything under thinker_config; its top-level model_type may be anything.
    model_type = "qwen3_asr" if "thinker_config" in config else config.get("model_type")
    found = next((n for n in family_names() if model_type in get_family(n).model_types), model_type)
    return {"spec": spec, "kind": "folder", "path": str(path.resolve()), "layout": detect_layout(path),
            "sha256": folder_sha256(path), "family": found}


def _hub_family(repo_id: str, revision: str) -> str | None:
    """The family name of a hub model's config.json at `revision` (its model_type when no family handles it)."""
    from transformers import AutoConfig

    config = from_pretrained_or_raise(AutoConfig.from_pretrained, "model.init_from", repo_id, revision)
    return next((n for n in family_names() if config.model_type in get_family(n).model_types), config.model_type)


def _check_init_family(found: str | None, family: ModelFamily, spec: str) -> None:
    if found != family.name:
        raise ConfigError(f"model.init_from: {spec!r} is a {found or 'unknown'} model, but model.family is "
                          f"{family.name}; Round 2 continues the Round-1 model's family: set model.family to "
                          f"{found}, or name a {family.name} model")


def _save_in_run(model, processor, folder: Path) -> None:
    """Save a model and its processor as `folder` (RUN/base) in one rename: a crash leaves the old folder or the
    new one, never half of one. Leftovers of a killed first start are discarded (run.json is not written yet, so
    nothing refers to them)."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    for leftover in (tmp, folder.with_name(f".tmp-old-{folder.name}")):
        if leftover.exists():
            shutil.rmtree(leftover)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    fsync_tree(tmp)
    ckpt.replace_folder(tmp, folder)


def architecture_record(recipe: Recipe, base: dict[str, Any]) -> dict[str, Any]:
    """What run.json records as the architecture's base (`model.tiny` or `model.name_or_path`), beside `base`.
    Without `model.init_from` it is the base itself, so its pin is copied. With it, a hub id is resolved when
    the hub cache or the hub can say (else "revision" is None: the weights come from init_from, so an
    unresolvable architecture base never stops a run); a local folder is recorded by absolute path only."""
    m = recipe.model
    if m.tiny:
        return {"family": m.family, "tiny": m.tiny}
    record = {"family": m.family, "name_or_path": m.name_or_path, "requested_revision": m.revision, "revision": None}
    if m.init_from is None and base["kind"] == "hub":
        record["revision"] = base["revision"]
    elif m.init_from is None:  # a local folder: pinned by content, not by revision
        record.update(name_or_path=base["name_or_path"], sha256=base["sha256"])
    elif is_local_path(m.name_or_path):
        record["name_or_path"] = str(Path(m.name_or_path).expanduser().resolve())
    elif is_commit_sha(m.revision):
        record["revision"] = m.revision
    else:
        record["revision"] = cached_hub_revision(m.name_or_path, m.revision)
        if record["revision"] is None:
            try:
                record["revision"] = resolve_hub_revision(m.name_or_path, m.revision)
            except CheckpointError:
                pass
    return record


def diff_keys(a, b, prefix: str = "") -> set[str]:
    """Dotted paths of the leaves where two nested dicts differ (`{"train": {"lr": 1}}` vs 2: {"train.lr"})."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
