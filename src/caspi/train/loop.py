"""The training recipe. Read it top to bottom: `train()` is the whole run, `TrainingRun.setup()` builds everything,
`TrainingRun.train()` is the loop (batch → loss → backward → clip → step → log → maybe eval → maybe save), and the
small methods below it do one thing each.

    caspi train --recipe recipes/round2-2xa100.yaml --out runs/round2          # one process
    torchrun --nproc_per_node 2 -m caspi train --recipe ... --out runs/round2  # DDP (gloo on CPU, NCCL on GPU)

Run folder:
    run.json            recipe fingerprint, the pinned base model (hub commit sha or folder content hash),
                        manifests' sha256, gate decision, world size (checked on resume)
    recipe.yaml         the resolved recipe
    base/               tiny models only: the randomly initialised base model and processor (export rebuilds from it)
    checkpoints/        step-NNNNNN/ (see caspi.train.checkpoint), `latest`, keep-last-N plus best-by-WER
    metrics.jsonl       one JSON object per logged step, eval and event
    tensorboard/        when tracking.tensorboard
    final/              the merged model + processor at the end, loadable with `from_pretrained`

Exactness. A run resumed from any checkpoint, including one saved by SIGTERM between two micro-batches of a
gradient accumulation, continues with the same batches, the same RNG draws and the same accumulated gradients, so on
CPU its metrics.jsonl losses equal an uninterrupted run's (tests/e2e/test_train_resume.py kills and restarts it).
What makes that hold: the sampler's position is saved in batches consumed; the DataLoader gets its own generator
(its iterator would otherwise draw from the global RNG); SpecAugment runs here, in the main process, on the saved
torch/numpy RNGs; speed perturbation is a hash of (seed, epoch, cut id); the learning rate is a pure function of
the step.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from caspi.config import PhaseConfig, Recipe
from lhotse import CutSet

from caspi.data.batches import (
    AsrBatchDataset,
    check_targets,
    dataset_from_recipe,
    restore_sampler,
    sampler_from_recipe,
    sampler_state,
    spec_augment_from_recipe,
)
from caspi.data.cuts import cut_domain, cut_text, file_sha256, read_manifest
from caspi.errors import CaspiError, CheckpointError, ConfigError, DataError
from caspi.eval.metrics import score
from caspi.models.ctc import CtcAux
from caspi.models.families import base_model, get_family, pin_base
from caspi.models.unfreeze import (
    apply_lora,
    apply_trainable,
    group_table,
    lora_substitute,
    optimizer_param_groups,
    rebuild_optimizer,
    trainable_names,
)
from caspi.train import checkpoint as ckpt
from caspi.train.preempt import PreemptionFlag, ignore_interrupt_in_worker, request_requeue
from caspi.train.resources import CostMeter, device_memory_gib, hardware_warnings
from caspi.train.track import METRICS_FILE, Tracker

HOP = 160  # samples per mel frame at 16 kHz (both families' feature extractors)
CTC_HEAD_PREFIX = "aux.ctc_head."  # names of the CTC head's tensors in trainable.safetensors


class TrainingError(CaspiError):
    """The run cannot go on (e.g. too many non-finite losses in a row); the message says what to change."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    preempted: bool  # stopped by SIGTERM/SIGUSR1/Ctrl+C after saving; resume with the same command
    last_loss: float | None
    best_wer: float | None
    checkpoint: Path | None


def train(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    force_gate: bool = False,
    cpu_fallback: bool = False,
    progress: bool = True,
    new_data: bool = False,
) -> TrainResult:
    """Train (or resume, when `run_dir` holds a checkpoint) as the recipe says; see the module docstring.
    `new_data`: resume even though a manifest changed since the checkpoint, restarting the current epoch on it."""
    run = TrainingRun(recipe, Path(run_dir), overrides=list(overrides), force_gate=force_gate,
                      cpu_fallback=cpu_fallback, progress=progress, new_data=new_data)
    try:
        run.setup()
        return run.train()
    finally:
        run.cleanup()


class TrainingRun:
    def __init__(self, recipe: Recipe, run_dir: Path, *, overrides: list[str], force_gate: bool,
                 cpu_fallback: bool, progress: bool, new_data: bool = False):
        self.recipe, self.run_dir, self.overrides = recipe, run_dir, overrides
        self.force_gate, self.cpu_fallback, self.progress = force_gate, cpu_fallback, progress
        self.new_data = new_data
        self.preempt = PreemptionFlag()
        self.tracker: Tracker | None = None
        self.ctc: CtcAux | None = None

    # ============================================================================================== setup

    def setup(self) -> None:
        r = self.recipe
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard bars on every save/load would drown the training bar
        # --- processes and device. torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain process is a world of one.
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device, self.model_dtype, self.autocast_dtype = self._pick_device()
        self.cost = CostMeter(r.hardware.price_per_gpu_hour, self.world_size, self.device)  # clock starts here
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        # Derived, so the effective batch holds for whatever number of processes runs the recipe.
        self.accum = r.train.grad_accumulation(self.world_size)

        # --- the gate, the run folder, and whether this is a resume.
        self.ckpt_root = self.run_dir / "checkpoints"
        gate = self._check_gate()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.ckpt_root)
        self._barrier()
        self.resume_path = ckpt.find_latest(self.ckpt_root)
        self.resume = ckpt.load_checkpoint(self.resume_path, self.rank) if self.resume_path is not None else None
        started_before = (self.run_dir / "run.json").is_file()
        self._barrier()  # every rank has looked before rank 0 writes run.json
        self.family = get_family(r.model.family)
        self.train_cuts = self._read_train_cuts()
        check_targets(self.train_cuts, r.data.train_manifest)  # empty transcripts: refused before any model work
        # The base model and the manifests are pinned in run.json at the first start and checked on every resume.
        self._check_run_metadata(gate, started_before)

        # --- model, processor, LoRA, CTC head. The base is the pinned one, on the first start and on resume; the
        # trained tensors then come from the checkpoint.
        self.model, self.processor = self._load_base()
        torch.manual_seed(r.train.seed)  # LoRA and CTC head init: the same on every rank
        if r.lora.enabled:
            self.model = apply_lora(self.model, r=r.lora.r, alpha=r.lora.alpha, dropout=r.lora.dropout,
                                    target_regex=r.lora.target_regex)
        if r.train.gradient_checkpointing:
            base = base_model(self.model)
            if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5.x name; the old one warns
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        if r.train.ctc_aux_weight > 0:
            base = base_model(self.model)
            vocab = base.get_output_embeddings().weight.shape[0]
            self.ctc = CtcAux(self.model, base.config.get_text_config().hidden_size, vocab)
        self.model.to(self.device)
        # from_pretrained returns a model in eval mode: without this, dropout (LoRA's too) and activation
        # checkpointing (transformers only checkpoints in training mode) would be silently off.
        self.model.train()
        if self.ctc is not None:
            self.ctc.head.to(self.device).train()
        torch.manual_seed(r.train.seed + self.rank)  # dropout and SpecAugment draws: per rank, so masks differ
        np.random.seed((r.train.seed + self.rank) % 2**32)
        random.seed(r.train.seed + self.rank)

        # --- data: duration-bucketed sampler (metadata only), loader, augmentation, the fixed eval subset.
        self.sampler = sampler_from_recipe(r, self.train_cuts, world_size=self.world_size, rank=self.rank)
        self.dataset = dataset_from_recipe(r, train=True)
        self.spec_augment = spec_augment_from_recipe(r)
        self.batches_per_epoch = self._count_batches()
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accum)
        self.eval_set = self._load_eval_subset() if self.is_main else None

        # --- the position in the run; a resume overwrites it.
        self.step, self.epoch, self.micro, self.consumed = 0, 1, 0, 0  # consumed: batches of this epoch
        self.phase: PhaseConfig | None = None
        self.trained: set[str] = set()  # every parameter name trained so far (all phases): what checkpoints hold
        self.best: tuple[float, str] | None = None  # (WER, checkpoint name)
        self.bad_steps = 0  # consecutive non-finite steps
        self.chunks = 1  # micro-batch split after CUDA OOM: each micro-batch runs as `chunks` pieces
        self.pending_loss = torch.zeros(3)  # (loss, ce, ctc) of this step's micro-batches so far, each ÷ accum
        self.last_loss: float | None = None
        self.clips_per_s = 0.0  # over the last logging interval, all processes
        self.optimizer: torch.optim.Optimizer | None = None
        self._print_start()
        if self.resume is not None:
            self._restore(self.resume)
        else:
            self._enter_phase(self._phase_for(1))

        self.cost.carry_over(self.run_dir / METRICS_FILE)  # before the tracker truncates it to the checkpoint
        self.tracker = Tracker(
            self.run_dir, enabled=self.is_main, tensorboard=r.tracking.tensorboard, wandb=r.tracking.wandb,
            wandb_project=r.tracking.wandb_project, run_name=self.run_dir.name, config=r.to_dict(),
            resume_offset=self.resume.state["metrics_offset"] if self.resume else 0,
            resume_step=self.step if self.resume else None,
            wandb_id=self.resume.state.get("wandb_id") if self.resume else None,
        )
        if self.data_change:
            self._event("new_data", self.data_change)
        for event, message in hardware_warnings(r, self.world_size, device_memory_gib(self.device)):
            self._event(event, message)
        self.preempt.install()

    # ============================================================================================== the loop

    def train(self) -> TrainResult:
        r = self.recipe
        total_steps = self._total_steps()
        if self.resume is not None and (self._done(total_steps) or self.epoch > r.train.epochs):
            print(f"caspi: {self.run_dir} already finished (step {self.step}); nothing to do", file=sys.stderr)
            return TrainResult(self.run_dir, self.step, min(self.epoch, r.train.epochs), False, self.last_loss,
                               self.best[0] if self.best else None, self.resume_path)
        bar = self._progress_bar(total_steps)
        window: list[dict] = []  # this step's model inputs (CPU, augmented), kept to replay them after a CUDA OOM
        t_log, clips_since_log = time.perf_counter(), 0
        resumed_epoch = self.resume is not None
        while self.epoch <= r.train.epochs and not self._done(total_steps):
            self._maybe_advance_phase()
            if not resumed_epoch:
                self.sampler.set_epoch(self.epoch)
                self.consumed = 0
            resumed_epoch = False
            self.dataset.set_epoch(self.epoch)
            for batch, last_of_epoch in self._batches():
                self.consumed += 1
                window.append(self._model_inputs(batch))
                self.micro += 1
                sync = self.micro == self.accum or last_of_epoch  # the last micro-batch of a step synchronises
                self.pending_loss += self._forward_backward_or_split(window, sync, self.pending_loss)
                clips_since_log += len(batch["ids"]) * self.world_size
                if sync:
                    loss = self._optimizer_step(self.pending_loss, n_micro=self.micro)
                    window.clear()
                    self.pending_loss = torch.zeros(3)
                    self.micro = 0
                    self.step += 1
                    if loss is not None:
                        self.last_loss = loss
                    if self.step % r.train.log_every_steps == 0 or self.step == 1:
                        elapsed = time.perf_counter() - t_log
                        self._log_step(loss, clips_since_log / max(elapsed, 1e-9))
                        t_log, clips_since_log = time.perf_counter(), 0
                    bar.set_postfix_str(self._postfix(loss), refresh=False)  # drawn once, by update()
                    bar.update(1)
                    improved = False
                    if self.eval_every and self.step % self.eval_every == 0:
                        improved = self._evaluate()
                    if self.step % r.train.save_every_steps == 0 or improved:
                        self._save("periodic" if not improved else "best")
                    if self._done(total_steps):
                        break
                if self._preemption_requested():
                    return self._stop_for_preemption(bar)
            else:
                self.epoch += 1
                continue
            break  # max_steps reached inside the epoch
        bar.close()
        if self.eval_every and (self.step % self.eval_every != 0):
            self._evaluate()
        final = self._save("final")
        self._export_final()
        self._event("finished", f"finished at step {self.step}, epoch {min(self.epoch, r.train.epochs)}")
        return TrainResult(self.run_dir, self.step, min(self.epoch, r.train.epochs), False, self.last_loss,
                           self.best[0] if self.best else None, final)

    # ============================================================================================== one step

    def _forward_backward_or_split(self, window: list[dict], sync: bool, step_loss: torch.Tensor) -> torch.Tensor:
        """Forward/backward of the window's newest micro-batch. On CUDA OOM: drop this step's gradients, halve the
        micro-batch (each runs as twice as many pieces: accumulation doubles, the effective batch stays), log it,
        and replay the step's micro-batches so far. Returns what to add to `step_loss`."""
        replay = False
        while True:
            try:
                if replay:
                    step_loss.zero_()
                    for earlier in window[:-1]:
                        step_loss += self._forward_backward(earlier, False)
                return self._forward_backward(window[-1], sync)
            except torch.OutOfMemoryError:
                # (After a resume in the middle of a step, the restored partial gradients of micro-batches before
                # the preemption cannot be replayed and are lost with this reset: a rare, logged imprecision.)
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.chunks >= self.recipe.train.micro_batch:
                    raise TrainingError(
                        f"out of memory at step {self.step + 1} with a micro-batch of one clip; lower "
                        "train.max_batch_duration / data.max_duration, or enable train.gradient_checkpointing"
                    ) from None
                self.chunks *= 2
                self._event("oom", f"CUDA out of memory at step {self.step + 1}: micro-batch halved (split "
                                   f"{self.chunks} ways), accumulation doubled; effective batch unchanged")
                replay = True

    def _forward_backward(self, inputs: dict, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch, loss ÷ accumulation; returns (loss, ce, ctc) ÷ accum.

        With `self.chunks > 1` (after a CUDA OOM) the micro-batch runs as that many pieces, each weighted by its
        share of the micro-batch's label tokens (CE) and clips (CTC), so the gradient equals the unsplit one.
        """
        r = self.recipe
        w = r.train.ctc_aux_weight
        n_tokens = int((inputs["labels"] != -100).sum())
        n_clips = inputs["labels"].shape[0]
        parts = _split_rows(inputs, self.chunks)
        total = torch.zeros(3)
        for i, part in enumerate(parts):
            last_part = i == len(parts) - 1
            ctx = self._ddp_sync_context(sync and last_part)
            with ctx:
                frame_lens = part.pop("frame_lens")
                targets = part.pop("ctc_targets")
                part = {k: v.to(self.device) for k, v in part.items()}
                with self._autocast():
                    out = self.ddp_model(**part)
                ce = out.loss.float() * (int((part["labels"] != -100).sum()) / n_tokens)
                ctc = torch.zeros((), device=ce.device)
                if self.ctc is not None:
                    ctc = self.ctc.loss(part, frame_lens, targets) / n_clips
                loss = (1.0 - w) * ce + w * ctc
                (loss / self.accum).backward()
            total += torch.stack([loss.detach(), ce.detach(), ctc.detach()]).cpu() / self.accum
        return total

    def _optimizer_step(self, step_loss: torch.Tensor, n_micro: int) -> float | None:
        """Clip, step, zero; skip the update when the loss or gradient norm is not finite. Returns the step's loss
        (mean over processes) or None when skipped."""
        r = self.recipe
        if n_micro < self.accum:
            # The epoch ended mid-window: the gradient holds n_micro of accum micro-batches; rescale to a mean.
            for p in self._trainable_params():
                if p.grad is not None:
                    p.grad.mul_(self.accum / n_micro)
            step_loss = step_loss * (self.accum / n_micro)
        step_loss = self._all_reduce_mean(step_loss)
        if self.ctc is not None and self.world_size > 1:
            # The CTC head lives outside the DDP-wrapped model: average its gradients by hand.
            for p in self.ctc.head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.world_size
        self._set_lr(self.step)
        params = self._trainable_params()
        max_norm = r.train.grad_clip if r.train.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.grad_norm = float(grad_norm)
        self.step_losses = step_loss
        if not (torch.isfinite(step_loss).all() and math.isfinite(self.grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self._event("nonfinite", f"step {self.step + 1}: loss {step_loss[0].item()} / grad norm "
                                     f"{self.grad_norm}; update skipped ({self.bad_steps} in a row)")
            if self.bad_steps >= r.train.max_bad_steps:
                self._save("nonfinite")
                raise TrainingError(
                    f"{self.bad_steps} optimizer steps in a row had a non-finite loss or gradient (last: step "
                    f"{self.step + 1}); stopped (train.max_bad_steps = {r.train.max_bad_steps}). Lower the learning "
                    "rates or check the data; the last checkpoint holds the state before it diverged."
                )
            return None
        self.bad_steps = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(step_loss[0])

    def _model_inputs(self, batch: dict) -> dict:
        """Batch from the loader → model inputs (on the CPU): features (B, n_mels, T) with SpecAugment applied,
        labels, plus `frame_lens` (B,) and `ctc_targets` for the CTC head. Built once per micro-batch, so an OOM
        replay sees the same SpecAugment masks and draws no more random numbers."""
        audio, lens = batch["audio"], batch["audio_lens"]  # (B, T_samples), (B,)
        clips = [audio[i, : int(n)].numpy() for i, n in enumerate(lens)]
        inputs = self.family.build_inputs(self.processor, clips, batch["texts"], dtype=self.model_dtype,
                                          language=self.recipe.model.language)
        feats = inputs["input_features"]  # (B, n_mels, T_mel)
        frame_lens = torch.clamp((lens + HOP - 1) // HOP, max=feats.shape[-1])  # (B,) mel frames of real audio
        if "input_features_mask" in inputs:
            frame_lens = inputs["input_features_mask"].sum(dim=1)
        if self.spec_augment is not None:
            augmented = self.spec_augment(feats.transpose(1, 2).float(), frame_lens)  # (B, T_mel, n_mels)
            inputs["input_features"] = augmented.transpose(1, 2).to(feats.dtype).contiguous()
        inputs["frame_lens"] = frame_lens
        inputs["ctc_targets"] = (
            self.processor.tokenizer(batch["texts"], add_special_tokens=False)["input_ids"] if self.ctc else None
        )
        return inputs

    # ============================================================================================== phases

    def _phase_for(self, epoch: int) -> PhaseConfig:
        return [p for p in self.recipe.unfreeze.phases if p.start_epoch <= epoch][-1]

    def _maybe_advance_phase(self) -> None:
        phase = self._phase_for(self.epoch)
        if phase is not self.phase:
            self._enter_phase(phase)

    def _enter_phase(self, phase: PhaseConfig, restoring: bool = False) -> None:
        """Set requires_grad for the phase's groups, (re)build the optimizer with their learning rates keeping
        AdamW state for parameters that stay, re-wrap DDP (it records trainable parameters when built), log it."""
        r = self.recipe
        first = self.phase is None
        names = trainable_names(self.model, r.phase_group_specs(phase))
        if r.lora.enabled:
            names = lora_substitute(self.model, names)
        apply_trainable(self.model, names)
        for group in names.values():
            self.trained.update(group)
        self._float32_masters()
        extra = []
        if self.ctc is not None:
            extra.append({"name": "ctc_head", "params": list(self.ctc.head.parameters()),
                          "param_names": [CTC_HEAD_PREFIX + n for n, _ in self.ctc.head.named_parameters()],
                          "lr": max(phase.lr.values()), "weight_decay": 0.0})
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                optimizer_param_groups(self.model, names, phase.lr, r.train.weight_decay) + extra,
                lr=max(phase.lr.values()), betas=tuple(r.train.betas), weight_decay=r.train.weight_decay,
            )
        else:
            self.optimizer = rebuild_optimizer(self.optimizer, self.model, names, phase.lr, r.train.weight_decay,
                                               extra_groups=extra)
        for group in self.optimizer.param_groups:
            group["peak_lr"] = group["lr"]
        # Walked every step (rescale, clip) and at every save: listed once per phase, not per step.
        self.named_trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.ctc is not None:
            self.named_trainable += [(CTC_HEAD_PREFIX + n, p) for n, p in self.ctc.head.named_parameters()]
        self.phase = phase
        self.phase_start_step = self.step if not restoring else self.phase_start_step
        self.ddp_model = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None
            )
        if self.is_main and not restoring:
            verb = "Starting with" if first else "Switching to"
            number = self.recipe.unfreeze.phases.index(phase) + 1
            print(f"{verb} {phase.name} (phase {number} of {len(self.recipe.unfreeze.phases)}, epoch {self.epoch}, "
                  f"step {self.step}):", file=sys.stderr)
            print(group_table(self.model, names, phase.lr).render(), file=sys.stderr)
            if not first:
                self._event("phase", f"switched to phase {phase.name} at epoch {self.epoch}, step {self.step}")

    def _set_lr(self, step: int) -> None:
        """Linear warmup over `train.warmup_steps` from the start of the phase, then cosine/linear decay to zero
        at the phase's end (or constant); each group scales its own peak LR."""
        t = self.recipe.train
        s = step - self.phase_start_step  # steps into this phase
        total = max(1, self._phase_steps(self.phase))
        if t.warmup_steps and s < t.warmup_steps:
            factor = (s + 1) / t.warmup_steps
        else:
            progress = min(1.0, (s - t.warmup_steps) / max(1, total - t.warmup_steps))
            factor = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress,
                      "constant": 1.0}[t.schedule]
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor

    def _phase_steps(self, phase: PhaseConfig) -> int:
        phases = self.recipe.unfreeze.phases
        i = phases.index(phase)
        end = phases[i + 1].start_epoch if i + 1 < len(phases) else self.recipe.train.epochs + 1
        return (end - phase.start_epoch) * self.steps_per_epoch

    # ============================================================================================== eval

    @property
    def eval_every(self) -> int | None:
        return self.recipe.eval.every_steps if self.recipe.data.eval_manifest else None

    def _evaluate(self) -> bool:
        """WER/CER on the fixed eval subset (rank 0; the others wait). Returns True when the WER is a new best."""
        improved = False
        if self.is_main:
            e = self.recipe.eval
            model = self.model
            started = time.perf_counter()
            hyps = self.family.decode(model, self.processor, self.eval_set["audio"], max_new_tokens=e.max_new_tokens,
                                      batch_size=e.batch_size, autocast_dtype=self.autocast_dtype,
                                      num_beams=e.num_beams, language=self.recipe.model.language)
            overall = score(self.eval_set["refs"], hyps, e.normaliser)
            record = {"kind": "eval", "step": self.step, "epoch": self.epoch, "wer": overall.wer,
                      "cer": overall.cer, "utterances": overall.utterances,
                      "seconds": round(time.perf_counter() - started, 3)}
            for domain in sorted(set(self.eval_set["domains"])):
                rows = [i for i, d in enumerate(self.eval_set["domains"]) if d == domain]
                s = score([self.eval_set["refs"][i] for i in rows], [hyps[i] for i in rows], e.normaliser)
                record[f"wer/{domain}"], record[f"cer/{domain}"] = s.wer, s.cer
            record.update(self.cost.fields())  # gpu_hours, cost_usd: CUDA runs with a price only
            self.tracker.log(record)
            improved = self.best is None or overall.wer < self.best[0]
            if improved:
                self.best = (overall.wer, ckpt.checkpoint_name(self.step))
            print(f"eval step {self.step}: WER {overall.wer:.3f} CER {overall.cer:.3f}"
                  + (" (best)" if improved else ""), file=sys.stderr)
        flag = self._all_reduce_max(float(improved))
        if self.world_size > 1:
            self.best = self._broadcast_object(self.best)
        return flag > 0

    def _load_eval_subset(self) -> dict | None:
        """The first `eval.samples` cuts of the eval manifest taken round-robin over domains (sorted by id), so
        every domain is in the subset; loaded once into memory."""
        path = self.recipe.data.eval_manifest
        if not path:
            return None
        cuts = sorted(read_manifest(path), key=lambda c: c.id)
        by_domain: dict[str, list] = {}
        for cut in cuts:
            by_domain.setdefault(cut_domain(cut), []).append(cut)
        chosen = []
        queues = [list(v) for _, v in sorted(by_domain.items())]
        while len(chosen) < self.recipe.eval.samples and any(queues):
            for q in queues:
                if q and len(chosen) < self.recipe.eval.samples:
                    chosen.append(q.pop(0))
        # No augmentation; a clip past the family's window (Whisper: 30 s) fails here, at the start, not at the
        # first eval.
        dataset = AsrBatchDataset(for_training_text=False, max_seconds=self.family.max_audio_seconds)
        batch = dataset[CutSet.from_cuts(chosen)]
        audio = [batch["audio"][i, : int(n)].numpy() for i, n in enumerate(batch["audio_lens"])]
        return {"ids": batch["ids"], "refs": [cut_text(c) for c in chosen], "domains": batch["domains"],
                "audio": audio}

    # ============================================================================================== checkpoints

    def _snapshot(self) -> ckpt.Snapshot:
        params = dict(self.model.named_parameters())
        weights = {n: params[n] for n in sorted(self.trained)}
        if self.ctc is not None:
            weights.update({CTC_HEAD_PREFIX + n: p for n, p in self.ctc.head.named_parameters()})
        rank_state = {
            "rng": ckpt.capture_rng(),  # as tensors and lists: the file is read back with weights_only=True
            "sampler": sampler_state(self.sampler, self.consumed),
            # Mid-accumulation (preemption): this process's partial gradients, unsynchronised under DDP.
            "grads": {n: p.grad.detach().cpu().clone() for n, p in self.named_trainable if p.grad is not None}
            if self.micro else {},
            "pending_loss": self.pending_loss.clone(),
        }
        state = {
            "step": self.step, "epoch": self.epoch, "micro": self.micro, "consumed": self.consumed,
            "phase": self.phase.name, "phase_start_step": self.phase_start_step, "chunks": self.chunks,
            "bad_steps": self.bad_steps, "best": list(self.best) if self.best else None,
            "last_loss": self.last_loss, "trained": sorted(self.trained),
            "metrics_offset": self.tracker.offset() if self.tracker is not None and self.is_main else 0,
            "wandb_id": self.tracker.wandb_id if self.tracker is not None and self.is_main else None,
            "fingerprint": self.recipe.fingerprint(), "base": self.base_info, "manifests": self.manifests,
        }
        return ckpt.Snapshot(state=state, weights=weights, optimizer=self.optimizer.state_dict(),
                             rank_state=rank_state)

    def _save(self, reason: str) -> Path:
        started = time.perf_counter()
        # The metrics offset is rank 0's; the other ranks' snapshots carry 0 and rank 0 writes state.json.
        path = ckpt.save_checkpoint(
            self.ckpt_root, self._snapshot(), rank=self.rank, world_size=self.world_size, barrier=self._barrier,
            keep_last=self.recipe.train.keep_last, best=self.best[1] if self.best else None,
        )
        if self.is_main:
            self._event("checkpoint", f"{reason}: saved {path.name} in {time.perf_counter() - started:.2f} s")
        return path

    def _restore(self, snap: ckpt.Snapshot) -> None:
        s = snap.state
        if s.get("world_size", 1) != self.world_size:
            raise CheckpointError(
                f"{self.resume_path} was written by {s.get('world_size', 1)} process(es), this run has "
                f"{self.world_size}: an exact resume needs the same number (the sampler position is per process)"
            )
        if s["fingerprint"] != self.recipe.fingerprint():
            raise CheckpointError(f"{self.ckpt_root}: the checkpoint was made with another recipe; resume with the "
                                  "same recipe and overrides, or use a new --out")
        self.step, self.epoch, self.micro, self.consumed = s["step"], s["epoch"], s["micro"], s["consumed"]
        self.chunks, self.bad_steps, self.last_loss = s["chunks"], s["bad_steps"], s["last_loss"]
        self.best = tuple(s["best"]) if s["best"] else None
        self.phase_start_step = s["phase_start_step"]
        # Every tensor trained in earlier phases first (it may be frozen now), then enter the saved phase.
        phase = next(p for p in self.recipe.unfreeze.phases if p.name == s["phase"])
        self.trained = set(s["trained"])
        self._float32_masters()  # before loading: the saved float32 weights must not pass through bf16
        self._load_weights(snap.weights)
        self._enter_phase(phase, restoring=True)
        saved_groups = [(g["name"], g["param_names"]) for g in snap.optimizer["param_groups"]]
        groups = [(g["name"], g["param_names"]) for g in self.optimizer.param_groups]
        if saved_groups != groups:
            raise CheckpointError(f"{self.ckpt_root}: optimizer groups in the checkpoint differ from the recipe's "
                                  f"phase {phase.name!r}")
        self.optimizer.load_state_dict(snap.optimizer)
        rs = snap.rank_state
        if self.restart_epoch:
            # --new-data: the saved position and partial step index the old manifest's batches; start the epoch over.
            self.consumed, self.micro = 0, 0
            self.sampler.set_epoch(self.epoch)
        else:
            restore_sampler(self.sampler, rs["sampler"])
            self.pending_loss = rs["pending_loss"].clone()
            named = dict(self.named_trainable)
            for name, grad in rs["grads"].items():
                named[name].grad = grad.to(named[name].device, named[name].dtype)
        ckpt.restore_rng(rs["rng"])
        if self.is_main:
            print(f"Resuming from {self.resume_path}: step {self.step}, "
                  f"epoch {self.epoch}, phase {phase.name}, {self.consumed} batches into the epoch"
                  + (f", {self.micro} micro-batches into the step" if self.micro else ""), file=sys.stderr)

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        unknown = [n for n in weights if n not in params and not n.startswith(CTC_HEAD_PREFIX)]
        if unknown:
            raise CheckpointError(f"checkpoint tensors not in the model: {', '.join(unknown[:5])}")
        with torch.no_grad():
            for name, tensor in weights.items():
                if name.startswith(CTC_HEAD_PREFIX):
                    target = dict(self.ctc.head.named_parameters())[name[len(CTC_HEAD_PREFIX):]]
                else:
                    target = params[name]
                target.copy_(tensor.to(target.dtype))

    # ============================================================================================== preemption

    def _preemption_requested(self) -> bool:
        return self._all_reduce_max(float(self.preempt.requested)) > 0

    def _stop_for_preemption(self, bar) -> TrainResult:
        bar.close()
        path = self._save(f"preempted by {self.preempt.name}")
        if self.is_main:
            print(f"caspi: {self.preempt.name} received: saved {path} (step {self.step}, epoch {self.epoch}, "
                  f"{self.micro} micro-batches into the next step); run the same command to resume", file=sys.stderr)
            requeue = request_requeue() if self.preempt.requeue_wanted else None  # not after Ctrl+C
            if requeue:
                print(f"caspi: {requeue}", file=sys.stderr)
        return TrainResult(self.run_dir, self.step, self.epoch, True, self.last_loss,
                           self.best[0] if self.best else None, path)

    # ============================================================================================== helpers

    def _pick_device(self) -> tuple[torch.device, torch.dtype, torch.dtype | None]:
        """(device, weights dtype, autocast dtype or None)."""
        r = self.recipe
        dtype = getattr(torch, r.model.dtype)
        if r.hardware.accelerator == "cuda":
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
                autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[r.train.precision]
                return torch.device("cuda", self.local_rank), dtype, autocast
            if not self.cpu_fallback:
                raise TrainingError("hardware.accelerator is cuda but CUDA is not available here; pass --cpu-fallback "
                                    "to continue on CPU (slow), or set hardware.accelerator=cpu")
            print("caspi: CUDA is not available; continuing on CPU in float32 (--cpu-fallback)", file=sys.stderr)
            return torch.device("cpu"), torch.float32, None
        autocast = torch.bfloat16 if r.train.precision == "bf16" and dtype == torch.bfloat16 else None
        return torch.device("cpu"), dtype, autocast

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _check_gate(self):
        from caspi.audit.gate import check_gate

        report = self.recipe.gate.report
        if report is None:
            return None
        return check_gate(report, self.recipe.data.train_manifest, force=self.force_gate)

    def _check_run_metadata(self, gate, started_before: bool) -> None:
        """First start: pin the base model (`_pin_base`) and the manifests' sha256, write run.json and recipe.yaml.
        Later starts: the recipe must be the one stored, the manifests the ones the checkpoint was trained on
        (`_check_manifests`); the pinned base is checked when `_load_base` loads it."""
        meta_path = self.run_dir / "run.json"
        fingerprint = self.recipe.fingerprint()
        self.manifests = self._manifest_hashes()
        self.data_change: str | None = None  # set when --new-data accepts a changed manifest; logged as an event
        self.restart_epoch = False  # --new-data on a changed train manifest: the saved sampler position is dropped
        if started_before:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta["fingerprint"] != fingerprint:
                stored = meta.get("recipe", {})
                changed = sorted(_diff_keys(stored, self.recipe.to_dict()))
                raise CheckpointError(
                    f"{self.run_dir} holds a run of another recipe (changed: {', '.join(changed) or '?'}); resume "
                    "with the same recipe and overrides, or train into a new --out folder"
                )
            self.base_info = meta.get("base")  # None: a run from before pinning (`_load_base` warns)
            self._check_manifests(meta)
            return
        if self.resume is not None:
            raise CheckpointError(f"{self.run_dir}: checkpoints without run.json; not a Caspi run folder")
        if self.is_main:
            import transformers

            from caspi import __version__

            meta = {
                "fingerprint": fingerprint, "recipe_name": self.recipe.name, "overrides": self.overrides,
                "recipe": self.recipe.to_dict(), "world_size": self.world_size,
                "gate": gate.to_dict() if gate else None, "base": self._pin_base(), "manifests": self.manifests,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "caspi": __version__, "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
            ckpt.write_text_atomic(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))
            ckpt.write_text_atomic(self.run_dir / "recipe.yaml", self.recipe.to_yaml())
        self._barrier()
        # Every rank loads the base rank 0 pinned (a hub branch could move between two resolutions).
        self.base_info = json.loads(meta_path.read_text(encoding="utf-8"))["base"]

    def _manifest_hashes(self) -> dict[str, dict]:
        """{"train": {"path", "sha256"}, "eval": ...} of the recipe's manifests (eval only when it exists)."""
        d = self.recipe.data
        return {role: {"path": str(path), "sha256": file_sha256(path)}
                for role, path in (("train", d.train_manifest), ("eval", d.eval_manifest))
                if path and Path(path).is_file()}

    def _check_manifests(self, meta: dict) -> None:
        """A resume must read the manifests the checkpoint was trained on: the saved sampler position indexes the
        train manifest's batches, and best-by-WER compares evals on the eval manifest. A changed one is refused,
        naming both hashes, unless `--new-data`: then the current epoch restarts on the new data (sampler position
        and the partial step dropped; the step count and LR schedule go on), run.json records the change and an
        event is logged. Before any checkpoint a changed manifest is simply recorded."""
        recorded = (self.resume.state.get("manifests") if self.resume is not None else None) or meta.get("manifests")
        if recorded is None:
            return  # a run from before manifests were recorded
        changed = {role: (recorded.get(role, {}).get("sha256"), self.manifests.get(role, {}).get("sha256"))
                   for role in ("train", "eval")}
        changed = {role: pair for role, pair in changed.items() if pair[0] != pair[1]}
        if not changed:
            return
        if self.resume is not None and not self.new_data:
            role, (old, new) = next(iter(changed.items()))
            path = self.manifests.get(role, recorded.get(role, {})).get("path")
            raise CheckpointError(
                f"{path}: the {role} manifest changed since checkpoint {self.resume_path.name} was saved (sha256 "
                f"{old} then, {new} now); resuming would continue from a sampler position in other data. Restore "
                f"that manifest to resume exactly, or pass --new-data to restart epoch {self.resume.state['epoch']} "
                "on the new one"
            )
        if self.resume is not None:
            self.restart_epoch = "train" in changed
            self.data_change = (
                f"--new-data: {' and '.join(changed)} manifest(s) changed since {self.resume_path.name} ("
                + "; ".join(f"{role} sha256 {old} → {new}" for role, (old, new) in changed.items()) + ")"
                + (f"; epoch {self.resume.state['epoch']} restarts on the new data" if self.restart_epoch else "")
            )
        if self.is_main:
            meta["manifests"] = self.manifests
            meta.setdefault("data_changes", []).append({
                "step": self.resume.state["step"] if self.resume is not None else 0,
                "changed": {role: {"old": old, "new": new} for role, (old, new) in changed.items()},
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            ckpt.write_text_atomic(self.run_dir / "run.json", json.dumps(meta, indent=2, ensure_ascii=False))
        self._barrier()

    def _read_train_cuts(self):
        d = self.recipe.data
        if not d.train_manifest:
            raise ConfigError("data.train_manifest: required for training")
        if not Path(d.train_manifest).is_file():
            raise DataError(f"{d.train_manifest}: training manifest not found (data.train_manifest)")
        cuts = read_manifest(d.train_manifest)
        kept = cuts.filter(lambda c: d.min_duration <= c.duration <= d.max_duration).to_eager()
        if len(kept) == 0:
            raise DataError(f"{d.train_manifest}: no cut lies within data.min_duration..max_duration "
                            f"({d.min_duration}..{d.max_duration} s)")
        skipped = len(cuts) - len(kept)
        if skipped and self.is_main:
            print(f"caspi: skipping {skipped} cuts outside {d.min_duration}..{d.max_duration} s", file=sys.stderr)
        return kept

    def _pin_base(self) -> dict:
        """The base this run trains on, as run.json records it (`caspi.models.families.pin_base`). Tiny: build the
        random model once and save it under RUN/base (a resume and `caspi export` load the same files), pinned by
        its content hash. Otherwise the hub id's commit sha or the local folder's content hash. Rank 0 only."""
        m = self.recipe.model
        if m.tiny:
            base_dir = self.run_dir / "base"
            if not (base_dir / "config.json").is_file():
                texts = sorted({cut_text(c) for c in self.train_cuts})
                # He init of the audio front end: without it a model trained from scratch ignores the audio
                # (REFERENCE.md, "Default init starves the decoder of audio"). Whisper's init needs no fix.
                options = {"audio_init": "he"} if self.family.name == "qwen3_asr" else {}
                model, processor = self.family.tiny(texts, seed=self.recipe.train.seed, size=m.tiny,
                                                    language=m.language, **options)
                tmp = self.run_dir / ".tmp-base"
                model.save_pretrained(tmp)
                processor.save_pretrained(tmp)
                os.replace(tmp, base_dir)
            return {**pin_base("base", in_run=True, folder=base_dir), "tiny": m.tiny}
        return pin_base(m.name_or_path, m.revision)

    def _load_base(self):
        """The pinned base, the same on the first start and on every resume; a local folder that changed since
        is refused with both hashes (see `caspi.train.export.load_base`)."""
        from caspi.train.export import load_base

        return load_base(self.run_dir, {"base": self.base_info}, self.recipe, self.family, self.model_dtype)

    def _count_batches(self) -> int:
        """Micro-batches per epoch for this rank, by a metadata-only pass of a twin sampler (no audio read)."""
        twin = sampler_from_recipe(self.recipe, self.train_cuts, world_size=self.world_size, rank=self.rank)
        twin.set_epoch(1)
        return sum(1 for _ in twin)

    def _batches(self) -> Iterator[tuple[dict, bool]]:
        """The epoch's batches with a flag on the last one (the step it ends must synchronise gradients)."""
        generator = torch.Generator().manual_seed(self.recipe.train.seed)  # keeps the global RNG untouched
        loader = torch.utils.data.DataLoader(
            self.dataset, sampler=self.sampler, batch_size=None, num_workers=self.recipe.data.num_workers,
            generator=generator, worker_init_fn=ignore_interrupt_in_worker,
        )
        it = iter(loader)
        try:
            current = next(it)
        except StopIteration:
            return
        for following in it:
            yield current, False
            current = following
        yield current, True

    def _total_steps(self) -> int:
        total = self.steps_per_epoch * self.recipe.train.epochs
        return min(total, self.recipe.train.max_steps) if self.recipe.train.max_steps else total

    def _done(self, total_steps: int) -> bool:
        return self.step >= total_steps

    def _float32_masters(self) -> None:
        """Every parameter trained so far keeps a float32 master copy under a bf16/fp16 model (AdamW updates in
        16 bits stall); frozen ones stay in the model's dtype."""
        for name, p in self.model.named_parameters():
            if name in self.trained and p.dtype != torch.float32:
                p.data = p.data.float()

    def _trainable_params(self) -> list[torch.Tensor]:
        return [p for _, p in self.named_trainable]

    def _ddp_sync_context(self, sync: bool):
        import contextlib

        if self.world_size > 1 and not sync:
            return self.ddp_model.no_sync()
        return contextlib.nullcontext()

    def _barrier(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()

    def _all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        t = t.clone().to(self.device)
        dist.all_reduce(t)
        return (t / self.world_size).cpu()

    def _all_reduce_max(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def _broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _log_step(self, loss: float | None, clips_per_s: float) -> None:
        self.clips_per_s = clips_per_s
        losses = self.step_losses
        record = {"kind": "train", "step": self.step, "epoch": self.epoch, "phase": self.phase.name,
                  "loss": float(losses[0]), "ce": float(losses[1])}
        if self.ctc is not None:
            record["ctc"] = float(losses[2])
        record["skipped"] = loss is None
        record.update({f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups
                       if not g["name"].endswith(".no_decay")})
        record.update({"grad_norm": self.grad_norm, "samples_per_s": round(clips_per_s, 2),
                       "mem_gib": round(_memory_gib(self.device), 3)})
        record.update(self.cost.fields())  # gpu_hours, cost_usd: CUDA runs with a price only
        if self.tracker is not None:
            self.tracker.log(record)

    def _event(self, event: str, message: str) -> None:
        if self.tracker is not None:
            self.tracker.log({"kind": "event", "step": self.step, "event": event, "message": message})
        if self.is_main and event not in ("checkpoint",):
            print(f"caspi: {message}", file=sys.stderr)

    def _postfix(self, loss: float | None) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        text = "skipped" if loss is None else f"{loss:.3f}"
        return f"loss {text} lr {lr:.2e} {self.clips_per_s:.1f} clips/s mem {_memory_gib(self.device):.2f} GiB"

    def _progress_bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                    disable=not (self.progress and self.is_main), file=sys.stderr)

    def _print_start(self) -> None:
        if not self.is_main:
            return
        r = self.recipe
        model = f"tiny-{r.model.tiny}" if r.model.tiny else r.model.name_or_path
        print(f"caspi train: {r.name} → {self.run_dir}\n"
              f"  model    {r.model.family} {model} on {self.device} ({self.model_dtype}, autocast "
              f"{self.autocast_dtype})\n"
              f"  data     {len(self.train_cuts)} cuts; {self.batches_per_epoch} micro-batches × {self.world_size} "
              f"process(es) per epoch; micro {r.train.micro_batch} × world {self.world_size} × accumulation "
              f"{self.accum} = effective {r.train.effective_batch}\n"
              f"  steps    {self.steps_per_epoch} per epoch, {self._total_steps()} in all", file=sys.stderr)

    def _export_final(self) -> None:
        if self.is_main:
            from caspi.train.export import export_model

            out = export_model(self.model, self.processor, self.run_dir / "final")
            print(f"caspi: final model (merged, loadable with from_pretrained) in {out}", file=sys.stderr)
        self._barrier()

    def cleanup(self) -> None:
        self.preempt.restore()
        if self.ctc is not None:
            self.ctc.remove()
        if self.tracker is not None:
            self.tracker.close()
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _split_rows(inputs: dict, chunks: int) -> list[dict]:
    """Split model inputs by rows into `chunks` pieces (1: the inputs as they are)."""
    if chunks == 1:
        return [dict(inputs)]
    n = inputs["labels"].shape[0]
    bounds = np.linspace(0, n, min(chunks, n) + 1).astype(int)
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = {}
        for k, v in inputs.items():
            part[k] = v[lo:hi] if v is not None else None
        parts.append(part)
    return parts


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _diff_keys(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
