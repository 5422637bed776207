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
  Logged only on CUDA and only when a price is set: a CPU run uses no GPU hours, so it logs no cost at all rather
  than a misleading 0.
"""

from __future__ import annotations

import json
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

    def __init__(self, price_per_gpu_hour: float | None, world_size: int, device: torch.device,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled = price_per_gpu_hour is not None and device.type == "cuda"
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

    def fields(self) -> dict[str, float]:
        """{"gpu_hours", "cost_usd"} so far, or {} when no price is set or the run is not on CUDA."""
        if not self.enabled:
            return {}
        hours = self.gpu_hours()
        return {"gpu_hours": round(hours, 6), "cost_usd": round(hours * self.price, 4)}


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
    autocast = torch.bfloat16 if recipe.train.precision == "bf16" and dtype == torch.bfloat16 else None
    return torch.device("cpu"), dtype, autocast


def memory_gib(device: torch.device) -> float:
    """Peak memory: allocated on the GPU, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
