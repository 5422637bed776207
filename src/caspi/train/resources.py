"""What the recipe's `hardware` section promises against what a run really has, and what the run costs.

* `pick_device`: this process's device, weights dtype and autocast dtype from `hardware` and `train.precision`;
  `memory_gib`: its peak memory so far (logged every step).

* `hardware_warnings`: at the start of training, one line each when `hardware.gpus_per_node × hardware.nodes`
  differs from the real number of processes, or (CUDA) when the device has less memory than
  `hardware.gpu_memory_gib`. Warnings, not errors: gradient accumulation is derived from the real world size, so
  the effective batch holds either way, but the recipe's plan (memory per device, cost) does not.
* `CostMeter`: GPU hours so far = processes × wall-clock hours since the training process started its setup, summed
  over every start of the run (a resume carries on from the last figure in metrics.jsonl, so time lost to a
  preemption and recomputed is counted: it was paid for). `cost_usd` = GPU hours × `hardware.price_per_gpu_hour`.
  Counted whenever the recipe sets a price, on any device: a price in the recipe says the user pays for the machine
  by the hour, a CPU instance included ("GPU hours" are then device hours). Without a price nothing is logged
  rather than a misleading 0.
* `Budget`: `hardware.budget_usd` against the meter. The loop asks it after every optimizer step: one warning at
  `WARN_SHARE` (80 %) of the budget; at 100 % the loop saves a checkpoint and stops with `EXIT_OVER_BUDGET` (4), or,
  with `hardware.over_budget: continue`, warns once and goes on. A resume of a stopped run carries the cost over,
  so with the same budget it stops again at once; `hardware.budget_usd` and `hardware.over_budget` may change on a
  resume (they are not part of the recipe fingerprint). `projection` is the cost of the whole run at the rate so
  far, printed at the first eval.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from caspi.errors import TrainingError

# Cards report a little less than their nominal size (an A100-40GB shows 39.4 GiB, an H100-80GB 79.2 GiB), and
# recipes give the nominal one: only a shortfall beyond this share warns.
MEMORY_TOLERANCE = 0.05
WARN_SHARE = 0.8  # of hardware.budget_usd: the one early warning
EXIT_OVER_BUDGET = 4  # the CLI's exit code for a run the budget stopped (0-3 are taken, 143 is preemption)


def device_memory_gib(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GiB; None for any other device."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def hardware_warnings(recipe, world_size: int, memory_gib: float | None) -> list[tuple[str, str]]:
    """(event name, one-line message) for each way this run differs from the recipe's `hardware` section.

    `memory_gib`: the device's total memory (`device_memory_gib`), None on CPU (nothing to compare)."""
    hw = recipe.hardware
    warnings = []
    if hw.world_size != world_size:
        warnings.append((
            "world_size_mismatch",
            f"warning: the recipe plans hardware.gpus_per_node × hardware.nodes = {hw.gpus_per_node} × {hw.nodes} = "
            f"{hw.world_size} process(es), but this run has {world_size}; gradient accumulation follows the real "
            f"number ({recipe.train.grad_accumulation(world_size)}), so the effective batch holds, but time and cost "
            "differ from the plan",
        ))
    if memory_gib is not None and hw.gpu_memory_gib is not None and memory_gib < hw.gpu_memory_gib * (
        1 - MEMORY_TOLERANCE
    ):
        warnings.append((
            "gpu_memory_short",
            f"warning: this GPU has {memory_gib:.1f} GiB, less than the recipe's hardware.gpu_memory_gib "
            f"({hw.gpu_memory_gib:g} GiB); expect out-of-memory (the loop then halves the micro-batch)",
        ))
    return warnings


class CostMeter:
    """GPU hours and cost so far (see the module docstring). `fields()` is what to add to a metrics record."""

    def __init__(self, price_per_gpu_hour: float | None, world_size: int,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled = price_per_gpu_hour is not None
        self.price = price_per_gpu_hour
        self.world_size = world_size
        self.clock = clock
        self.started = clock()  # seconds, on `clock`
        self.previous_gpu_hours = 0.0  # from earlier starts of the same run

    def carry_over(self, metrics_path: Path) -> None:
        """Continue from the largest `gpu_hours` logged by earlier starts of this run (read before the tracker
        truncates the file to the checkpoint on resume). A missing file, or lines that do not parse, count as 0."""
        if not self.enabled or not metrics_path.is_file():
            return
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                hours = json.loads(line).get("gpu_hours")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(hours, (int, float)):
                self.previous_gpu_hours = max(self.previous_gpu_hours, float(hours))

    def gpu_hours(self) -> float:
        return self.previous_gpu_hours + self.world_size * (self.clock() - self.started) / 3600

    def cost_usd(self) -> float:
        """USD so far; 0 without a price."""
        return self.gpu_hours() * self.price if self.enabled else 0.0

    def fields(self) -> dict[str, float]:
        """{"gpu_hours", "cost_usd"} so far, or {} when no price is set."""
        if not self.enabled:
            return {}
        hours = self.gpu_hours()
        return {"gpu_hours": round(hours, 6), "cost_usd": round(hours * self.price, 4)}


class Budget:
    """`hardware.budget_usd` and `hardware.over_budget` against a `CostMeter` (see the module docstring).

    Inactive (every method a no-op) without a budget. `notices` and `should_stop` read the meter's clock afresh;
    under DDP each process reads its own, so the loop reduces `should_stop` over the processes."""

    def __init__(self, meter: CostMeter, budget_usd: float | None, over_budget: str = "stop"):
        self.meter, self.budget, self.mode = meter, budget_usd, over_budget
        self.warned = False  # the 80 % warning was given (at most once per start)
        self.exceeded = False  # the 100 % notice was given (continue mode: at most once per start)

    @property
    def active(self) -> bool:
        return self.budget is not None and self.meter.enabled

    def notices(self) -> list[tuple[str, str]]:
        """(event name, one-line message) of the warnings due now: `budget_warning` once at 80 %, and in continue
        mode `over_budget` once at 100 %. Stop mode's 100 % is `should_stop` + `stop_message`."""
        if not self.active:
            return []
        hours, found = self.meter.gpu_hours(), []
        cost = hours * self.meter.price
        if cost >= self.budget:
            self.warned = True  # past 80 % too; in stop mode the loop stops now (`should_stop`)
            if self.mode == "continue" and not self.exceeded:
                self.exceeded = True
                found.append(("over_budget", f"warning: cost so far {self._spent(hours)} reached "
                                             f"hardware.budget_usd ${self.budget:g}; continuing "
                                             "(hardware.over_budget = continue)"))
        elif cost >= WARN_SHARE * self.budget and not self.warned:
            self.warned = True
            found.append(("budget_warning", f"warning: cost so far {self._spent(hours)} is {cost / self.budget:.0%} "
                                            f"of hardware.budget_usd ${self.budget:g}; the run "
                                            + ("goes on past it (hardware.over_budget = continue)"
                                               if self.mode == "continue" else "saves and stops at 100 %")))
        return found

    def should_stop(self) -> bool:
        return self.active and self.mode == "stop" and self.meter.cost_usd() >= self.budget

    def stop_message(self, step: int, total_steps: int, checkpoint: Path | None) -> str:
        """Why the run stopped and how to go on; the same words whether the budget ran out now or was already
        spent when a resume started."""
        hours = self.meter.gpu_hours()
        cost = hours * self.meter.price
        projected = cost / step * total_steps if step else cost
        raise_to = _round_up(max(projected, cost) * 1.1)  # a margin over the rate so far
        return (f"cost so far {self._spent(hours)} reached hardware.budget_usd ${self.budget:g} at step {step} of "
                f"{total_steps}; stopped with the checkpoint {checkpoint}. To go on, raise the budget and run the "
                f"same command again with hardware.budget_usd={raise_to:g} appended (about the whole run at the "
                "rate so far, +10 %), or with hardware.over_budget=continue")

    def projection(self, step: int, total_steps: int) -> str | None:
        """The cost of all `total_steps` at the cost per step so far; None without a price or before a step."""
        if not self.meter.enabled or step <= 0:
            return None
        hours = self.meter.gpu_hours()
        cost = hours * self.meter.price
        projected = cost / step * total_steps
        text = (f"projected cost of the run: ${projected:.2f} for {total_steps} steps ({self._spent(hours)} after "
                f"{step})")
        if self.budget is not None:
            if projected > self.budget:
                affordable = int(self.budget / cost * step)  # cost > 0: projected > budget > 0
                text += (f"; over hardware.budget_usd ${self.budget:g}, which pays for about {affordable} steps "
                         f"(over_budget: {self.mode})")
            else:
                text += f"; {projected / self.budget:.0%} of hardware.budget_usd ${self.budget:g}"
        return text

    def _spent(self, hours: float) -> str:
        return f"${hours * self.meter.price:.2f} ({hours:.3f} GPU-hours × ${self.meter.price:g})"


def _round_up(x: float) -> float:
    """`x` rounded up to two significant digits (1234.5 → 1300, 0.000123 → 0.00013); a figure to type."""
    if x <= 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / unit - 1e-9) * unit, 12)


def pick_device(recipe, local_rank: int, cpu_fallback: bool):
    """(device, weights dtype, autocast dtype or None) of this process."""
    dtype = getattr(torch, recipe.model.dtype)
    if recipe.hardware.accelerator == "cuda":
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[recipe.train.precision]
            return torch.device("cuda", local_rank), dtype, autocast
        if not cpu_fallback:
            raise TrainingError("hardware.accelerator is cuda but CUDA is not available here; pass --cpu-fallback "
                                "to continue on CPU (slow), or set hardware.accelerator=cpu")
        print("caspi: CUDA is not available; continuing on CPU in float32 (--cpu-fallback)", file=sys.stderr)
        return torch.device("cpu"), torch.float32, None
    if recipe.train.precision != "bf16":
        return torch.device("cpu"), dtype, None
    # bf16 autocast over the recipe's weights dtype (float32 masters of what trains, as on CUDA): on a CPU with
    # AVX512-BF16 a training step of the demo's model takes 0.64x the float32 time (benchmarks/bench_cpu_bf16.py).
    # Without native bf16 the kernels are emulated; that is the user's choice to make, said once.
    if not cpu_has_native_bf16():
        print("caspi: train.precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): the bf16 kernels are "
              "emulated and may be slower than train.precision=fp32", file=sys.stderr)
    return torch.device("cpu"), dtype, torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX tiles). torch has no public
    query; its private ones are missing from some builds, which then count as no."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def memory_gib(device: torch.device) -> float:
    """Peak memory: allocated on the GPU, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
