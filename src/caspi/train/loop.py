"""The training recipe. Read it top to bottom: `train()` runs it, `TrainingRun.setup()` builds everything,
`TrainingRun.train()` is the loop (for each epoch, for each micro-batch: forward/backward; at the end of a step:
clip → step → log → maybe eval → maybe save), and the methods below it each do one part of a step.

    caspi train --recipe recipes/round2-2xa100.yaml --out runs/round2          # one process
    torchrun --nproc_per_node 2 -m caspi train --recipe ... --out runs/round2  # DDP (gloo on CPU, NCCL on GPU)

Around it: `caspi.train.state` (the counters, the LR schedule, what a checkpoint holds, run.json),
`caspi.train.batches` (cuts → batches → model inputs, the eval subset), `caspi.train.distributed` (the process
group; no-ops in a world of one), `caspi.train.checkpoint` (atomic writes), `caspi.models.loading` (the model a run
trains: pinned base, LoRA, trained tensors).

Run folder:
    run.json            recipe fingerprint, the pinned base model (hub commit sha or folder content hash), the
                        Round-1 model it started from (`model.init_from`) and the architecture, manifests' sha256,
                        gate decision, world size (checked on resume)
    recipe.yaml         the resolved recipe
    base/               the base model and processor every load grafts the trained tensors onto: a tiny model's random
                        weights, or a local `model.init_from`'s copy (so the run never needs that folder again)
    checkpoints/        step-NNNNNN/ (see caspi.train.checkpoint), `latest`, keep-last-N plus best-by-WER
    metrics.jsonl       one JSON object per logged step, eval and event
    tensorboard/        when tracking.tensorboard
    final/              the merged model + processor at the end, loadable with `from_pretrained`

Exactness. A run resumed from any checkpoint, including one saved by SIGTERM between two micro-batches of a
gradient accumulation, continues with the same batches, the same RNG draws and the same accumulated gradients, so on
CPU its metrics.jsonl losses equal an uninterrupted run's (tests/train/test_kill_resume.py kills and restarts it).
What makes that hold: the sampler's position is saved in batches consumed; the DataLoader gets its own generator
(its iterator would otherwise draw from the global RNG); SpecAugment runs in the loop's process (`model_inputs`), on
the saved torch/numpy RNGs; speed perturbation is a hash of (seed, epoch, cut id); the learning rate is a pure
function of the step.

Cost. With `hardware.price_per_gpu_hour` every train and eval record carries `gpu_hours` and `cost_usd` so far, the
first eval prints the projected cost of the run, and `hardware.budget_usd` warns at 80 % and at 100 % saves and
stops (`TrainResult.over_budget`, exit 4) unless `hardware.over_budget: continue` (`caspi.train.resources.Budget`).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caspi.audit.gate import check_gate
from caspi.config import PhaseConfig, Recipe
from caspi.data.augment import spec_augment_from_recipe
from caspi.data.dataset import check_targets, dataset_from_recipe
from caspi.data.sampling import sampler_from_recipe
from caspi.errors import TrainingError
from caspi.models.ctc import CtcAux
from caspi.models.families import base_model, get_family
from caspi.models.loading import build_model, load_trained
from caspi.models.unfreeze import (apply_trainable, group_table, lora_substitute, optimizer_param_groups,
                                   rebuild_optimizer, trainable_names)
from caspi.scoring import score
from caspi.train import checkpoint as ckpt
from caspi.train import distributed, state
from caspi.train.batches import count_batches, epoch_batches, eval_subset, model_inputs, read_train_cuts, split_rows
from caspi.train.distributed import World
from caspi.train.export import export_model
from caspi.train.preempt import PreemptionFlag, request_requeue
from caspi.train.progress import ProgressDisplay
from caspi.train.resources import Budget, CostMeter, device_memory_gib, hardware_warnings, memory_gib, pick_device
from caspi.train.state import CTC_HEAD, CTC_HEAD_PREFIX, Progress
from caspi.train.track import METRICS_FILE, Tracker


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    preempted: bool  # stopped by SIGTERM/SIGUSR1/Ctrl+C after saving; resume with the same command
    last_loss: float | None
    best_wer: float | None
    checkpoint: Path | None
    is_main: bool = True  # rank 0 (under torchrun, the process that reports)
    over_budget: bool = False  # stopped at hardware.budget_usd after saving; raise the budget to resume


@dataclass
class StepResult:
    loss: float | None  # mean over processes; None when the update was skipped (non-finite loss or gradient)
    losses: torch.Tensor  # (loss, ce, ctc), mean over processes, also when skipped
    grad_norm: float  # before clipping


def train(recipe: Recipe, run_dir: str | Path, *, overrides: list[str] | tuple[str, ...] = (), force_gate: bool = False,
          cpu_fallback: bool = False, progress: bool = True, new_data: bool = False) -> TrainResult:
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
        self.force_gate, self.cpu_fallback, self.new_data = force_gate, cpu_fallback, new_data
        self.show_progress = progress  # a bar on a terminal, plain lines in a log (rank 0 only; caspi.train.progress)
        self.world = World.from_env()  # torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain process is a world of one
        self.preempt = PreemptionFlag()
        self.tracker: Tracker | None = None
        self.ctc: CtcAux | None = None

    # ============================================================================================== setup

    def setup(self) -> None:
        from transformers.utils import logging as hf_logging

        r = self.recipe
        hf_logging.disable_progress_bar()  # per-shard bars on every save/load would drown the training bar
        # --- processes and device
        self.device, self.model_dtype, self.autocast_dtype = pick_device(r, self.world.local_rank, self.cpu_fallback)
        self.cost = CostMeter(r.hardware.price_per_gpu_hour, self.world.size)  # clock starts here
        self.budget = Budget(self.cost, r.hardware.budget_usd, r.hardware.over_budget)
        self.projected = False  # the cost projection is printed at the first eval of each start
        self.world = distributed.start(self.world, self.device)
        # Derived, so the effective batch holds for whatever number of processes runs the recipe.
        self.accum = r.train.grad_accumulation(self.world.size)

        # --- the gate, the run folder, and whether this is a resume. run.json pins the base model and the manifests
        # at the first start and is checked on every later one.
        self.ckpt_root = self.run_dir / "checkpoints"
        gate = check_gate(r.gate.report, r.data.train_manifest, force=self.force_gate) if r.gate.report else None
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.ckpt_root)
        distributed.barrier(self.world)
        self.resume_path = ckpt.find_latest(self.ckpt_root)
        resume = ckpt.load_checkpoint(self.resume_path, self.world.rank) if self.resume_path is not None else None
        self.family = get_family(r.model.family)
        cuts = read_train_cuts(r, self.world.is_main)
        check_targets(cuts, r.data.train_manifest)  # empty transcripts: refused before any model work
        self.record = state.check_run_json(
            self.run_dir, r, world=self.world, resume=resume, resume_path=self.resume_path, new_data=self.new_data,
            gate=gate, overrides=self.overrides, family=self.family, train_cuts=cuts)

        # --- model: the pinned base (first start and resume alike), LoRA, the CTC head; a resume then loads the
        # trained tensors. build_model seeds torch with train.seed: LoRA and CTC head init are the same on every rank.
        self.model, self.processor = build_model(r, self.record.base, self.model_dtype, run_dir=self.run_dir)
        if r.train.gradient_checkpointing:
            self.family.enable_gradient_checkpointing(self.model)
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
        seed = r.train.seed + self.world.rank  # dropout and SpecAugment draws: per rank, so masks differ
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

        # --- data: duration-bucketed sampler (metadata only), loader, augmentation, the fixed eval subset.
        self.sampler = sampler_from_recipe(r, cuts, world_size=self.world.size, rank=self.world.rank)
        self.dataset = dataset_from_recipe(r, train=True, max_seconds=self.family.max_audio_seconds)
        self.spec_augment = spec_augment_from_recipe(r)
        batches_per_epoch = count_batches(r, cuts, world_size=self.world.size, rank=self.world.rank)
        self.steps_per_epoch = math.ceil(batches_per_epoch / self.accum)
        self.eval_set = eval_subset(r, self.family) if self.world.is_main else None

        # --- the position in the run: a fresh start enters the first phase, a resume restores the checkpoint.
        self.progress = Progress()
        self.optimizer: torch.optim.Optimizer | None = None
        self._print_start(len(cuts), batches_per_epoch)
        # (loss, ce, ctc) ÷ accum of the micro-batches of a step a preemption interrupted: where the loop's
        # step_loss starts (zeros at a step boundary).
        if resume is not None:
            self.partial_loss = self._resume(resume)
        else:
            self.partial_loss = torch.zeros(3)
            self._enter_phase(state.phase_for(r, 1))

        self.cost.carry_over(self.run_dir / METRICS_FILE)  # before the tracker truncates it to the checkpoint
        self.tracker = Tracker(
            self.run_dir, enabled=self.world.is_main, tensorboard=r.tracking.tensorboard, wandb=r.tracking.wandb,
            wandb_project=r.tracking.wandb_project, run_name=self.run_dir.name, config=r.to_dict(),
            resume_offset=resume.state["metrics_offset"] if resume else 0,
            resume_step=self.progress.step if resume else None,
            wandb_id=resume.state.get("wandb_id") if resume else None,
        )
        if self.record.data_change:
            self._event("new_data", self.record.data_change)
        for event, message in hardware_warnings(r, self.world.size, device_memory_gib(self.device)):
            self._event(event, message)
        self.preempt.install()

    # ============================================================================================== the loop

    def train(self) -> TrainResult:
        r, p = self.recipe, self.progress
        total_steps = self._total_steps()
        if self.resume_path is not None and (p.step >= total_steps or p.epoch > r.train.epochs):
            print(f"caspi: {self.run_dir} already finished (step {p.step}); nothing to do", file=sys.stderr)
            return self._result(min(p.epoch, r.train.epochs), self.resume_path)
        if self.resume_path is not None and self._over_budget():  # stopped by the budget, resumed with the same one
            return self._stop_for_budget(None, self.partial_loss, total_steps, saved=self.resume_path)
        display = ProgressDisplay(total_steps, initial=p.step, epochs=r.train.epochs,
                                  enabled=self.show_progress and self.world.is_main)
        window: list[dict] = []  # this step's model inputs (CPU, augmented), kept to replay them after a CUDA OOM
        step_loss = self.partial_loss  # (loss, ce, ctc) ÷ accum of this step's micro-batches so far
        t_log, clips_since_log, clips_per_s = time.perf_counter(), 0, 0.0  # clips/s: all processes
        resuming = self.resume_path is not None  # the first epoch goes on from the restored sampler position
        for epoch in range(p.epoch, r.train.epochs + 1):
            self._maybe_advance_phase(epoch)
            if not resuming:
                self.sampler.set_epoch(epoch)
                p.consumed = 0
            resuming = False
            self.dataset.set_epoch(epoch)
            batches = epoch_batches(self.dataset, self.sampler, seed=r.train.seed, num_workers=r.data.num_workers)
            for batch, last_of_epoch in batches:
                p.consumed += 1
                window.append(model_inputs(batch, self.family, self.processor, dtype=self.model_dtype,
                                           language=r.model.language, spec_augment=self.spec_augment,
                                           ctc_targets=self.ctc is not None))
                p.micro += 1
                sync = p.micro == self.accum or last_of_epoch  # the last micro-batch of a step synchronises
                step_loss = self._accumulate(window, sync, step_loss)
                clips_since_log += len(batch["ids"]) * self.world.size
                if sync:
                    result = self._optimizer_step(step_loss, n_micro=p.micro)
                    if result.loss is None and p.bad_steps >= r.train.max_bad_steps:
                        self._save("nonfinite", step_loss)
                        raise TrainingError(
                            f"{p.bad_steps} optimizer steps in a row had a non-finite loss or gradient (last: step "
                            f"{p.step + 1}); stopped (train.max_bad_steps = {r.train.max_bad_steps}). Lower the "
                            "learning rates or check the data; the last checkpoint holds the state before it diverged."
                        )
                    window, step_loss, p.micro = [], torch.zeros(3), 0
                    p.step += 1
                    if result.loss is not None:
                        p.last_loss = result.loss
                    if p.step % r.train.log_every_steps == 0 or p.step == 1:
                        clips_per_s = clips_since_log / max(time.perf_counter() - t_log, 1e-9)
                        self._log_step(result, clips_per_s)
                        t_log, clips_since_log = time.perf_counter(), 0
                    display.step(p.step, epoch=p.epoch, phase=p.phase, loss=result.loss,
                                 lr=self.optimizer.param_groups[0]["lr"], clips_per_s=clips_per_s,
                                 mem_gib=memory_gib(self.device))
                    improved = False
                    if self.eval_every and p.step % self.eval_every == 0:
                        improved = self._evaluate()
                    if p.step % r.train.save_every_steps == 0 or improved:
                        self._save("best" if improved else "periodic", step_loss)
                    if p.step >= total_steps:
                        break
                    if self._over_budget():
                        return self._stop_for_budget(display, step_loss, total_steps)
                if distributed.all_reduce_max(self.world, float(self.preempt.requested)) > 0:  # any process's signal
                    return self._stop_for_preemption(display, step_loss)
            if p.step >= total_steps:
                break  # max_steps reached inside the epoch
            p.epoch = epoch + 1  # this epoch ran out of batches
        display.close("done")
        if self.eval_every and (p.step % self.eval_every != 0):
            self._evaluate()
        final = self._save("final", step_loss)
        if self.world.is_main:
            out = export_model(self.model, self.processor, self.run_dir / "final")
            print(f"caspi: final model (merged, loadable with from_pretrained) in {out}", file=sys.stderr)
        distributed.barrier(self.world)
        self._event("finished", f"finished at step {p.step}, epoch {min(p.epoch, r.train.epochs)}")
        return self._result(min(p.epoch, r.train.epochs), final)

    # ============================================================================================== one step

    def _accumulate(self, window: list[dict], sync: bool, step_loss: torch.Tensor) -> torch.Tensor:
        """`step_loss` plus the forward/backward of the window's newest micro-batch. On CUDA OOM: drop this step's
        gradients, halve the micro-batch (each runs as twice as many pieces: accumulation doubles, the effective
        batch stays), log it, and replay the step's micro-batches from the first, so the step's loss is summed
        again from zero."""
        replay = False
        while True:
            try:
                if replay:
                    step_loss = torch.zeros(3)
                    for earlier in window[:-1]:
                        step_loss += self._forward_backward(earlier, False)
                return step_loss + self._forward_backward(window[-1], sync)
            except torch.OutOfMemoryError:
                # (After a resume in the middle of a step, the restored partial gradients of micro-batches before
                # the preemption cannot be replayed and are lost with this reset: a rare, logged imprecision.)
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                p = self.progress
                if p.chunks >= self.recipe.train.micro_batch:
                    raise TrainingError(
                        f"out of memory at step {p.step + 1} with a micro-batch of one clip; lower "
                        "train.max_batch_duration / data.max_duration, or enable train.gradient_checkpointing"
                    ) from None
                p.chunks *= 2
                self._event("oom", f"CUDA out of memory at step {p.step + 1}: micro-batch halved (split "
                                   f"{p.chunks} ways), accumulation doubled; effective batch unchanged")
                replay = True

    def _forward_backward(self, inputs: dict, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch, loss ÷ accumulation; returns (loss, ce, ctc) ÷ accum.

        With `progress.chunks > 1` (after a CUDA OOM) the micro-batch runs as that many pieces, each weighted by its
        share of the micro-batch's label tokens (CE) and clips (CTC), so the gradient equals the unsplit one.
        """
        w = self.recipe.train.ctc_aux_weight
        n_tokens = int((inputs["labels"] != -100).sum())
        n_clips = inputs["labels"].shape[0]
        parts = split_rows(inputs, self.progress.chunks)
        total = torch.zeros(3)
        for i, part in enumerate(parts):
            with distributed.no_sync(self.world, self.ddp_model, sync and i == len(parts) - 1):
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

    def _optimizer_step(self, step_loss: torch.Tensor, n_micro: int) -> StepResult:
        """Clip, step, zero; skip the update (counted in `progress.bad_steps`) when the loss or gradient norm is not
        finite."""
        r, p = self.recipe, self.progress
        if n_micro < self.accum:
            # The epoch ended mid-window: the gradient holds n_micro of accum micro-batches; rescale to a mean.
            for param in self._trainable_params():
                if param.grad is not None:
                    param.grad.mul_(self.accum / n_micro)
            step_loss = step_loss * (self.accum / n_micro)
        losses = distributed.all_reduce_mean(self.world, step_loss)
        if self.ctc is not None:
            distributed.average_gradients(self.world, self.ctc.head.parameters())
        factor = state.lr_factor(r, p, self.steps_per_epoch)  # warmup, then decay, from the phase's start
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        max_norm = r.train.grad_clip if r.train.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._trainable_params(), max_norm))
        if not (torch.isfinite(losses).all() and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            p.bad_steps += 1
            self._event("nonfinite", f"step {p.step + 1}: loss {losses[0].item()} / grad norm {grad_norm}; update "
                                     f"skipped ({p.bad_steps} in a row)")
            return StepResult(None, losses, grad_norm)
        p.bad_steps = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(float(losses[0]), losses, grad_norm)

    def _trainable_params(self) -> list[torch.Tensor]:
        return [p for _, p in self.named_trainable]

    # ============================================================================================== phases

    def _maybe_advance_phase(self, epoch: int) -> None:
        phase = state.phase_for(self.recipe, epoch)
        if phase.name != self.progress.phase:
            self._enter_phase(phase)

    def _enter_phase(self, phase: PhaseConfig, restoring: bool = False) -> None:
        """Set requires_grad for the phase's groups, (re)build the optimizer with their learning rates keeping
        AdamW state for parameters that stay, re-wrap DDP (it records trainable parameters when built), log it."""
        r, p = self.recipe, self.progress
        first = p.phase is None
        names = trainable_names(self.model, r.phase_group_specs(phase))
        if r.lora.enabled:
            names = lora_substitute(self.model, names)
        apply_trainable(self.model, names)
        for group in names.values():
            p.trained.update(group)
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
        self.named_trainable = [(n, t) for n, t in self.model.named_parameters() if t.requires_grad]
        if self.ctc is not None:
            self.named_trainable += [(CTC_HEAD_PREFIX + n, t) for n, t in self.ctc.head.named_parameters()]
        p.phase = phase.name
        if not restoring:
            p.phase_start_step = p.step
        self.ddp_model = distributed.wrap(self.world, self.model)
        if self.world.is_main and not restoring:
            verb = "Starting with" if first else "Switching to"
            number = r.unfreeze.phases.index(phase) + 1
            print(f"{verb} {phase.name} (phase {number} of {len(r.unfreeze.phases)}, epoch {p.epoch}, "
                  f"step {p.step}):", file=sys.stderr)
            print(group_table(self.model, names, phase.lr).render(), file=sys.stderr)
            if not first:
                self._event("phase", f"switched to phase {phase.name} at epoch {p.epoch}, step {p.step}")

    def _float32_masters(self) -> None:
        """Every parameter trained so far keeps a float32 master copy under a bf16/fp16 model (AdamW updates in
        16 bits stall); frozen ones stay in the model's dtype."""
        for name, param in self.model.named_parameters():
            if name in self.progress.trained and param.dtype != torch.float32:
                param.data = param.data.float()

    # ============================================================================================== eval

    @property
    def eval_every(self) -> int | None:
        return self.recipe.eval.every_steps if self.recipe.data.eval_manifest else None

    def _evaluate(self) -> bool:
        """WER/CER on the fixed eval subset (rank 0; the others wait). Returns True when the WER is a new best."""
        p, improved = self.progress, False
        if self.world.is_main:
            e, subset = self.recipe.eval, self.eval_set
            started = time.perf_counter()
            hyps = self.family.decode(self.model, self.processor, subset["audio"], max_new_tokens=e.max_new_tokens,
                                      batch_size=e.batch_size, autocast_dtype=self.autocast_dtype,
                                      num_beams=e.num_beams, language=self.recipe.model.language,
                                      no_repeat_ngram_size=e.no_repeat_ngram_size,
                                      repetition_penalty=e.repetition_penalty)
            overall = score(subset["refs"], hyps, e.normaliser)
            record = {"kind": "eval", "step": p.step, "epoch": p.epoch, "wer": overall.wer, "cer": overall.cer,
                      "utterances": overall.utterances, "seconds": round(time.perf_counter() - started, 3)}
            for domain in sorted(set(subset["domains"])):
                rows = [i for i, d in enumerate(subset["domains"]) if d == domain]
                s = score([subset["refs"][i] for i in rows], [hyps[i] for i in rows], e.normaliser)
                record[f"wer/{domain}"], record[f"cer/{domain}"] = s.wer, s.cer
            record.update(self.cost.fields())  # gpu_hours, cost_usd: when the recipe sets a price
            self.tracker.log(record)
            projection = None if self.projected else self.budget.projection(p.step, self._total_steps())
            if projection:
                self.projected = True
                self._event("cost_projection", projection)
            improved = p.best is None or overall.wer < p.best[0]
            if improved:
                p.best = (overall.wer, ckpt.checkpoint_name(p.step))
            print(f"eval step {p.step}: WER {overall.wer:.3f} CER {overall.cer:.3f}"
                  + (" (best)" if improved else ""), file=sys.stderr)
        flag = distributed.all_reduce_max(self.world, float(improved))
        p.best = distributed.broadcast_object(self.world, p.best)
        return flag > 0

    # ============================================================================================== checkpoints

    def _save(self, reason: str, step_loss: torch.Tensor) -> Path:
        started, p, main = time.perf_counter(), self.progress, self.world.is_main
        # The metrics offset is rank 0's; the other ranks' snapshots carry 0 and rank 0 writes state.json.
        run = {"metrics_offset": self.tracker.offset() if main else 0,
               "wandb_id": self.tracker.wandb_id if main else None, "fingerprint": self.record.fingerprint,
               "base": self.record.base, "manifests": self.record.manifests}
        snap = state.snapshot(p, model=self.model, ctc_head=self.ctc.head if self.ctc else None,
                              named_trainable=self.named_trainable, optimizer=self.optimizer, sampler=self.sampler,
                              step_loss=step_loss, run=run)
        path = ckpt.save_checkpoint(self.ckpt_root, snap, rank=self.world.rank, world_size=self.world.size,
                                    barrier=lambda: distributed.barrier(self.world),
                                    keep_last=self.recipe.train.keep_last, best=p.best[1] if p.best else None)
        if main:
            self._event("checkpoint", f"{reason}: saved {path.name} in {time.perf_counter() - started:.2f} s")
        return path

    def _resume(self, snap: ckpt.Snapshot) -> torch.Tensor:
        """Take the run back to the checkpoint; returns the loss so far of the step it interrupted (zeros at a step
        boundary)."""
        state.check_resumable(snap.state, world_size=self.world.size, fingerprint=self.record.fingerprint,
                              checkpoint=self.resume_path)
        p = self.progress = Progress.from_state(snap.state)
        # Every tensor trained in earlier phases first (it may be frozen now), then enter the saved phase.
        self._float32_masters()  # before loading: the saved float32 weights must not pass through bf16
        load_trained(self.model, snap.weights, aux={CTC_HEAD: self.ctc.head} if self.ctc else None,
                     source=str(self.resume_path))
        phase = state.phase_named(self.recipe, p.phase)
        self._enter_phase(phase, restoring=True)
        state.load_optimizer(self.optimizer, snap.optimizer, phase=phase.name, where=self.ckpt_root)
        if self.record.restart_epoch:
            # --new-data: the saved position and partial step index the old manifest's batches; start the epoch over.
            p.consumed, p.micro = 0, 0
            self.sampler.set_epoch(p.epoch)
            partial_loss = torch.zeros(3)
        else:
            partial_loss = state.restore_position(snap.rank_state, self.sampler, self.named_trainable)
        ckpt.restore_rng(snap.rank_state["rng"])
        if self.world.is_main:
            print(f"Resuming from {self.resume_path}: step {p.step}, epoch {p.epoch}, phase {phase.name}, "
                  f"{p.consumed} batches into the epoch"
                  + (f", {p.micro} micro-batches into the step" if p.micro else ""), file=sys.stderr)
        return partial_loss

    def _stop_for_preemption(self, display: ProgressDisplay, step_loss: torch.Tensor) -> TrainResult:
        p = self.progress
        display.close(f"stopped by {self.preempt.name}")
        path = self._save(f"preempted by {self.preempt.name}", step_loss)
        if self.world.is_main:
            print(f"caspi: {self.preempt.name} received: saved {path} (step {p.step}, epoch {p.epoch}, "
                  f"{p.micro} micro-batches into the next step); run the same command to resume", file=sys.stderr)
            # Only a time-limit warning (USR1) requeues: a TERM is a cancel, or SLURM's own requeue.
            requeue = request_requeue() if self.preempt.requeue_wanted else None
            if requeue:
                print(f"caspi: {requeue}", file=sys.stderr)
        return self._result(p.epoch, path, preempted=True)

    def _over_budget(self) -> bool:
        """Log the budget warnings due now; True when the run must stop (if any process says so: they all stop)."""
        if not self.budget.active:
            return False
        for event, message in self.budget.notices():
            self._event(event, message, **self.cost.fields())
        return distributed.all_reduce_max(self.world, float(self.budget.should_stop())) > 0

    def _stop_for_budget(self, display: ProgressDisplay | None, step_loss: torch.Tensor, total_steps: int,
                         saved: Path | None = None) -> TrainResult:
        """Save (unless `saved`: a resume that found the budget spent) and stop. The event carries the cost so far,
        so the next start carries it over even though it lies past the checkpoint's metrics offset."""
        if display is not None:
            display.close("stopped over budget")
        path = saved or self._save("over budget", step_loss)
        self._event("over_budget", self.budget.stop_message(self.progress.step, total_steps, path),
                    **self.cost.fields())
        return self._result(self.progress.epoch, path, over_budget=True)

    # ============================================================================================== helpers

    def _total_steps(self) -> int:
        total = self.steps_per_epoch * self.recipe.train.epochs
        return min(total, self.recipe.train.max_steps) if self.recipe.train.max_steps else total

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _result(self, epoch: int, checkpoint: Path | None, preempted: bool = False,
                over_budget: bool = False) -> TrainResult:
        p = self.progress
        return TrainResult(self.run_dir, p.step, epoch, preempted, p.last_loss, p.best[0] if p.best else None,
                           checkpoint, is_main=self.world.is_main, over_budget=over_budget)

    def _log_step(self, result: StepResult, clips_per_s: float) -> None:
        p, losses = self.progress, result.losses
        record = {"kind": "train", "step": p.step, "epoch": p.epoch, "phase": p.phase, "loss": float(losses[0]),
                  "ce": float(losses[1])}
        if self.ctc is not None:
            record["ctc"] = float(losses[2])
        record["skipped"] = result.loss is None
        record.update({f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups
                       if not g["name"].endswith(".no_decay")})
        record.update({"grad_norm": result.grad_norm, "samples_per_s": round(clips_per_s, 2),
                       "mem_gib": round(memory_gib(self.device), 3)})
        record.update(self.cost.fields())  # gpu_hours, cost_usd: when the recipe sets a price
        self.tracker.log(record)

    def _event(self, event: str, message: str, **fields) -> None:
        if self.tracker is not None:
            self.tracker.log({"kind": "event", "step": self.progress.step, "event": event, "message": message,
                              **fields})
        if self.world.is_main and event != "checkpoint":
            print(f"caspi: {message}", file=sys.stderr)

    def _print_start(self, n_cuts: int, batches_per_epoch: int) -> None:
        if not self.world.is_main:
            return
        r, n = self.recipe, self.world.size
        model = (f"tiny-{r.model.tiny}" if r.model.tiny else r.model.name_or_path) + (
            f", weights from {r.model.init_from}" if r.model.init_from else "")
        print(f"caspi train: {r.name} → {self.run_dir}\n"
              f"  model    {r.model.family} {model} on {self.device} ({self.model_dtype}, autocast "
              f"{self.autocast_dtype})\n"
              f"  data     {n_cuts} cuts; {batches_per_epoch} micro-batches × {n} "
              f"process(es) per epoch; micro {r.train.micro_batch} × world {n} × accumulation "
              f"{self.accum} = effective {r.train.effective_batch}\n"
              f"  steps    {self.steps_per_epoch} per epoch, {self._total_steps()} in all", file=sys.stderr)

    def cleanup(self) -> None:
        self.preempt.restore()
        if self.ctc is not None:
            self.ctc.remove()
        if self.tracker is not None:
            self.tracker.close()
        distributed.stop(self.world)
