"""Steps, hours and cost of a recipe: the arithmetic of `caspi plan`, counted the way the trainer counts.

Steps. The trainer (`caspi.train.loop`) runs `train.epochs` passes over the training cuts that lie within
`data.min_duration..data.max_duration` (`caspi.train.batches.read_train_cuts`). Each process gets
`batches_per_rank` micro-batches an epoch from the duration-bucketed sampler (at most `train.micro_batch` cuts, at
most `train.max_batch_duration` seconds of padded audio); a step is `accumulation` micro-batches, and the last step
of an epoch may hold fewer (it still steps):

    accumulation    = effective_batch / (micro_batch × world_size)            (TrainConfig.grad_accumulation)
    steps_per_epoch = ceil(batches_per_rank / accumulation)                   (TrainingRun.setup)
    total_steps     = min(steps_per_epoch × epochs, train.max_steps)          (TrainingRun._total_steps)

and a phase that starts at epoch e_i runs until the next one starts (the last until `train.epochs`), so its steps
are `steps_per_epoch × its epochs`, cut where `train.max_steps` ends the run. `batches_per_rank` is the trainer's
own count (a metadata-only pass of its sampler, `caspi.train.batches.count_batches`) for manifests of up to
`EXACT_COUNT_CUTS` cuts; for larger ones and for `--samples` it is estimated by packing the cuts, longest first,
into micro-batches within both limits (`packed_batches`), which the sampler's duration buckets approach: on 100,000
cuts of 1–15 s at micro-batch 2 the sampler makes 25,004 batches a rank on 2 ranks, the estimate 25,000.

Hours. A throughput is samples (clips) per second on one GPU, given or measured (`measure_throughput`); N GPUs are
assumed to reach `DDP_EFFICIENCY` of N times that. An epoch takes `clips / (throughput × N × efficiency)` seconds;
a run capped by `train.max_steps` runs its share `total_steps / (steps_per_epoch × epochs)` of that.
GPU-hours = hours × N; cost = GPU-hours × price per GPU-hour. No throughput, no hours: nothing here guesses one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lhotse import CutSet

from caspi.config import Recipe
from caspi.data.cuts import write_manifest
from caspi.errors import CaspiError, ConfigError, TrainingError
from caspi.train.batches import count_batches
from caspi.train.loop import train
from caspi.train.track import METRICS_FILE

# Share of N × one GPU's throughput that N GPUs under DDP reach: an ASSUMPTION, not a measurement (no multi-GPU
# machine measured it here). Each step ends with an all-reduce of the trainable gradients, which DDP overlaps with
# the backward pass; on one node with NVLink the loss is commonly quoted at a few to ~10 %. Stated in every
# plan that uses it; replace it with a measured figure when one exists.
DDP_EFFICIENCY = 0.9

# Manifests up to this many cuts get the trainer's exact batch count (a pass of its sampler: ~1 s for 20,000
# cuts here, ~22 s for 100,000, once per GPU count); larger ones the packing estimate.
EXACT_COUNT_CUTS = 20_000

# --measure: optimizer steps of the real trainer, the first two of which (allocator, kernel selection, first
# DataLoader iterator) are not timed.
MEASURE_STEPS = 10
MEASURE_WARMUP_STEPS = 2


@dataclass(frozen=True)
class Steps:
    """Steps of one layout (a number of GPUs) over the whole run."""

    batches_per_rank: int  # micro-batches each process gets in an epoch
    accumulation: int  # micro-batches per optimizer step
    steps_per_epoch: int
    total_steps: int  # after train.max_steps
    phase_steps: list[int]  # per unfreeze phase, in order; sums to total_steps

    @property
    def epochs_run(self) -> float:
        """Epochs the run covers: `train.epochs`, or less where `train.max_steps` ends it (a fraction)."""
        return self.total_steps / self.steps_per_epoch


def phase_epochs(recipe: Recipe) -> list[tuple[int, int]]:
    """(first, last) epoch of each unfreeze phase, 1-based and inclusive: a phase runs until the next one starts."""
    phases, last = recipe.unfreeze.phases, recipe.train.epochs
    starts = [p.start_epoch for p in phases]
    return [(start, (starts[i + 1] - 1) if i + 1 < len(starts) else last) for i, start in enumerate(starts)]


def accumulation(recipe: Recipe, world_size: int) -> int | None:
    """Micro-batches per optimizer step on `world_size` processes; None when the effective batch is not a multiple
    of micro_batch × world_size (the trainer refuses that layout)."""
    try:
        return recipe.train.grad_accumulation(world_size)
    except ConfigError:
        return None


def divisible_micro_batch(recipe: Recipe, world_size: int) -> int | None:
    """The largest micro-batch up to the recipe's that keeps the effective batch on `world_size` processes (what to
    set where `accumulation` is None); None when the effective batch is not a multiple of the process count."""
    t = recipe.train
    if t.effective_batch % world_size:
        return None
    per_process = t.effective_batch // world_size
    return max(m for m in range(1, min(t.micro_batch, per_process) + 1) if per_process % m == 0)


def packed_batches(durations: Sequence[float], *, micro_batch: int, max_batch_duration: float | None) -> int:
    """Micro-batches the cuts make when packed longest first: at most `micro_batch` cuts and at most
    `max_batch_duration` seconds counted as Lhotse counts them (cuts × the longest one, i.e. with padding). Sorted
    order is what duration buckets approach, so this is the sampler's count less its few bucket tails."""
    batches, size, longest = 0, 0, 0.0
    for d in sorted(durations, reverse=True):
        longest_if_added = longest if size else d
        full = size == micro_batch or (
            max_batch_duration is not None and size and (size + 1) * longest_if_added > max_batch_duration)
        if full:
            batches, size = batches + 1, 0
        if size == 0:
            longest = d
        size += 1
    return batches + (1 if size else 0)


def batches_per_rank(recipe: Recipe, world_size: int, *, cuts: CutSet | None = None,
                     samples: int | None = None) -> tuple[int, bool]:
    """(micro-batches per process per epoch, whether the trainer's own count gave it) from the training cuts (the
    trainer's count up to `EXACT_COUNT_CUTS` cuts, the packing estimate above) or from a number of samples (full
    micro-batches; `train.max_batch_duration` cannot be applied without durations)."""
    t = recipe.train
    if cuts is not None:
        if len(cuts) <= EXACT_COUNT_CUTS:
            return count_batches(recipe, cuts, world_size=world_size, rank=0), True
        total = packed_batches([c.duration for c in cuts], micro_batch=t.micro_batch,
                               max_batch_duration=t.max_batch_duration)
        return math.ceil(total / world_size), False
    if samples is None:
        raise ValueError("give cuts or samples")
    return math.ceil(samples / (t.micro_batch * world_size)), False


def count_steps(recipe: Recipe, batches: int, accum: int) -> Steps:
    """Steps per epoch, in all and per phase, from `batches` micro-batches per process per epoch."""
    per_epoch = math.ceil(batches / accum)
    cap = recipe.train.max_steps
    phase_steps, done = [], 0
    for first, last in phase_epochs(recipe):
        steps = per_epoch * (last - first + 1)
        if cap is not None:
            steps = max(0, min(steps, cap - done))
        phase_steps.append(steps)
        done += steps
    return Steps(batches, accum, per_epoch, done, phase_steps)


def ddp_efficiency(world_size: int) -> float:
    """`DDP_EFFICIENCY` for more than one process; one process loses nothing to gradient exchange."""
    return 1.0 if world_size == 1 else DDP_EFFICIENCY


def run_hours(clips_per_epoch: int, epochs_run: float, throughput: float, world_size: int) -> float:
    """Wall-clock hours of the run: clips × epochs ÷ (samples/s per GPU × GPUs × DDP efficiency) ÷ 3,600."""
    if not throughput > 0:
        raise ConfigError(f"throughput: expected samples per second per GPU > 0, got {throughput!r}")
    per_second = throughput * world_size * ddp_efficiency(world_size)  # samples/s, all GPUs
    return clips_per_epoch * epochs_run / per_second / 3600


def gpu_hours(hours: float, world_size: int) -> float:
    return hours * world_size


def cost_usd(hours: float, world_size: int, price_per_gpu_hour: float) -> float:
    return gpu_hours(hours, world_size) * price_per_gpu_hour


# ---------------------------------------------------------------------------------------------------------------
# --measure: samples per second of real training steps on this machine


@dataclass(frozen=True)
class Measurement:
    samples_per_s: float  # per GPU (one process)
    steps: int  # timed optimizer steps
    micro_batch: int
    seconds: float  # longest clip fed (before speed perturbation)
    device: str
    phase: str  # the unfreeze phase trained while timing

    def describe(self) -> str:
        return (f"measured here on {self.device}: {self.steps} timed steps of the trainer, phase {self.phase}, "
                f"micro-batch {self.micro_batch} of the longest clips (≤ {self.seconds:.1f} s), accumulation 1")


def _longest_cuts(cuts: CutSet, n: int) -> CutSet:
    """The `n` longest cuts, repeated under new ids when there are fewer."""
    ordered = sorted(cuts, key=lambda c: (-c.duration, c.id))
    chosen = [ordered[i % len(ordered)] for i in range(n)]
    return CutSet.from_cuts(c if i < len(ordered) else c.with_id(f"{c.id}-rep{i // len(ordered)}")
                            for i, c in enumerate(chosen))


def measure_recipe(recipe: Recipe, manifest: str | Path, steps: int) -> Recipe:
    """The recipe as the measurement trains it: one process, accumulation 1 (an optimizer step per micro-batch),
    one duration bucket (full micro-batches), the last unfreeze phase from the start (it trains the most, so it is
    the slowest: STYLE.md habit 7), no eval, no gate, no tracking, no periodic checkpoint, `steps` steps."""
    t = recipe.train
    last = recipe.unfreeze.phases[-1].model_copy(update={"start_epoch": 1})
    return recipe.model_copy(update={
        "hardware": recipe.hardware.model_copy(update={"nodes": 1, "gpus_per_node": 1}),
        "data": recipe.data.model_copy(update={"train_manifest": str(manifest), "eval_manifest": None}),
        "train": t.model_copy(update={"effective_batch": t.micro_batch, "epochs": 1, "max_steps": steps,
                                      "num_buckets": 1, "log_every_steps": 1, "save_every_steps": 10**9}),
        "unfreeze": recipe.unfreeze.model_copy(update={"phases": [last]}),
        "gate": recipe.gate.model_copy(update={"report": None}),
        "tracking": recipe.tracking.model_copy(update={"tensorboard": False, "wandb": False}),
    })


def measure_throughput(recipe: Recipe, cuts: CutSet, *, steps: int = MEASURE_STEPS) -> Measurement:
    """Samples per second per GPU of real training steps: `caspi.train.loop.train` on the recipe's model (its
    weights: a tiny model, or `model.init_from` / `model.name_or_path` from a local folder or the hub cache) and
    device, micro-batches of the training set's longest clips (a pessimistic figure: shorter clips go faster),
    `steps` optimizer steps in a temporary run folder. The first `MEASURE_WARMUP_STEPS` are not timed; the rest are
    read from the run's metrics.jsonl (`samples_per_s`, logged every step). Raises TrainingError when the recipe
    wants CUDA and there is none, and the model's loading error, prefixed, when its weights are not here."""
    if recipe.hardware.accelerator == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--measure: the recipe trains on CUDA (hardware.accelerator), which this machine does "
                            "not have; run plan --measure on the target machine, or give --throughput")
    if steps <= MEASURE_WARMUP_STEPS:
        raise ConfigError(f"measure steps: expected more than {MEASURE_WARMUP_STEPS}, got {steps}")
    micro = recipe.train.micro_batch
    chosen = _longest_cuts(cuts, micro * steps)
    with tempfile.TemporaryDirectory(prefix="caspi-plan-measure-") as tmp:
        manifest = write_manifest(chosen, Path(tmp) / "longest.jsonl.gz")
        timed = measure_recipe(recipe, manifest, steps)
        log = io.StringIO()  # the trainer's start lines and group tables: not part of a plan
        try:
            with contextlib.redirect_stderr(log):
                train(timed, Path(tmp) / "run", progress=False)
        except CaspiError as exc:
            raise type(exc)(f"--measure: training {recipe.model.init_from or recipe.model.name_or_path} failed "
                            f"(it needs the model's weights here): {exc}") from None
        records = [json.loads(line) for line in (Path(tmp) / "run" / METRICS_FILE).read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if r.get("kind") == "train" and r["step"] > MEASURE_WARMUP_STEPS]
    if not rates or not all(r > 0 for r in rates):
        raise TrainingError(f"--measure: the trainer logged no usable samples_per_s ({rates})")
    device = "cuda" if recipe.hardware.accelerator == "cuda" else "cpu"
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    # Every timed step trains `micro` clips, so the run's rate is the harmonic mean of the per-step rates.
    return Measurement(statistics.harmonic_mean(rates), len(rates), micro, max(c.duration for c in chosen),
                       device, recipe.unfreeze.phases[-1].name)


def require_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    """ConfigError naming the option unless `value` is None or a positive (or, `allow_zero`, non-negative) number."""
    if value is None:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}: expected {kind} {'>= 0' if allow_zero else '> 0'}, got {value!r}")
