"""Tests for caspi.train.distributed: the world torchrun describes, the helpers as identities in a world of one (the
loop calls them unconditionally), and their arithmetic in a real world of two (gloo). The whole DDP training run is
tests/train/test_ddp.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
import torch.distributed as dist

from caspi.train import distributed
from caspi.train.distributed import World


def test_the_world_comes_from_torchruns_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World(size=1, rank=0, local_rank=0) and World.from_env().is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = World.from_env()
    assert (world.size, world.rank, world.local_rank, world.is_main) == (4, 3, 1, False)


def test_a_world_of_one_needs_no_process_group_and_every_helper_is_the_identity():
    world = distributed.start(World(), torch.device("cpu"))
    assert world.device == torch.device("cpu") and not dist.is_initialized()
    distributed.barrier(world)
    t = torch.tensor([1.0, 2.0, 3.0])
    assert distributed.all_reduce_mean(world, t) is t
    assert distributed.all_reduce_max(world, 0.5) == 0.5
    best = (0.3, "step-000004")
    assert distributed.broadcast_object(world, best) is best
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients(world, [p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))
    model = torch.nn.Linear(2, 2)  # no `no_sync`: a world of one must not ask for it
    assert distributed.wrap(world, model) is model
    with distributed.no_sync(world, model, sync=False):
        pass
    distributed.stop(world)


WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    from caspi.train import distributed
    from caspi.train.distributed import World

    world = distributed.start(World.from_env(), torch.device("cpu"))
    r = world.rank
    assert world.size == 2 and world.is_main == (r == 0)
    mean = distributed.all_reduce_mean(world, torch.tensor([1.0, 10.0]) * (r + 1))
    assert torch.equal(mean, torch.tensor([1.5, 15.0])), mean
    assert distributed.all_reduce_max(world, float(r == 1)) == 1.0
    assert distributed.broadcast_object(world, ("best", r)) == ("best", 0)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.full((2,), float(r))
    distributed.average_gradients(world, [p])
    assert torch.equal(p.grad, torch.full((2,), 0.5))
    model = torch.nn.Linear(2, 1)
    ddp = distributed.wrap(world, model)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    with distributed.no_sync(world, ddp, sync=False):  # gradients stay local: rank 0's is 0, rank 1's is 1
        ddp(torch.full((1, 2), float(r))).sum().backward()
    assert torch.equal(model.weight.grad, torch.full((1, 2), float(r)))
    distributed.barrier(world)
    distributed.stop(world)
    # A file per rank, not a print: the two processes share torchrun's stdout, where their lines can interleave.
    (Path(sys.argv[1]) / f"ok-{r}").touch()
""")


def test_the_helpers_agree_across_a_world_of_two(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == ["ok-0", "ok-1"]
