"""The training processes: one (`caspi train`) or N under torchrun, which sets WORLD_SIZE, RANK and LOCAL_RANK.

Every helper is a no-op or the identity in a world of one, so the loop calls them unconditionally:

    world = start(World.from_env(), device)  # joins the process group when N > 1: NCCL on GPU, gloo on CPU
    ddp_model = wrap(world, model, device)    # DistributedDataParallel, or the model itself
    with no_sync(world, ddp_model, sync):     # a micro-batch that does not end its step skips the gradient all-reduce
        loss.backward()
    loss = all_reduce_mean(world, loss)       # (3,) on the CPU, the mean over processes
    stop(world)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    size: int = 1
    rank: int = 0  # 0 writes the shared files (run.json, checkpoints' shared part, metrics) and prints
    local_rank: int = 0  # index on this node: the GPU this process uses
    device: torch.device = torch.device("cpu")  # where collectives' tensors go (NCCL needs them on the GPU)

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun describes in the environment; a plain process is a world of one."""
        return cls(size=int(os.environ.get("WORLD_SIZE", "1")), rank=int(os.environ.get("RANK", "0")),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(world: World, device: torch.device) -> World:
    """Join the process group (once per process) and return the world with its device."""
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return replace(world, device=device)


def stop(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(world: World, t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over processes, on the CPU; `t` itself in a world of one."""
    if world.size == 1:
        return t
    t = t.clone().to(world.device)
    dist.all_reduce(t)
    return (t / world.size).cpu()


def all_reduce_max(world: World, value: float) -> float:
    """The largest `value` of any process (a flag any one process raises: 1.0 > 0.0)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def broadcast_object(world: World, obj):
    """Rank 0's `obj` on every process (picklable objects)."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(world: World, params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of parameters DDP does not manage (the CTC head lives outside the wrapped model)."""
    if world.size == 1:
        return
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= world.size


def wrap(world: World, model: torch.nn.Module) -> torch.nn.Module:
    """The model under DistributedDataParallel, or itself in a world of one. DDP records the parameters that need
    gradients when it is built: wrap again whenever the trainable set changes."""
    if world.size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[world.local_rank] if world.device.type == "cuda" else None)


def no_sync(world: World, ddp_model: torch.nn.Module, sync: bool):
    """Context for a backward pass: with `sync` False (a micro-batch that does not end its step) DDP keeps the
    gradients local instead of all-reducing them."""
    if world.size > 1 and not sync:
        return ddp_model.no_sync()
    return contextlib.nullcontext()
