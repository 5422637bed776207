"""DDP on CPU: `torchrun --nproc_per_node 2` (gloo) follows the same loss trajectory as one process at the same
effective batch (accumulation is derived: 4 with one process, 2 with two)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_processes_match_one_at_equal_effective_batch(make_recipe, read_run, tmp_path):
    # One duration bucket and no SpecAugment: the batch sequence is then the same for any world size (rank r takes
    # every 2nd batch of it), and no per-rank random draw differs. The CTC head (outside DDP) is on.
    recipe = make_recipe(train={"micro_batch": 2, "effective_batch": 8, "num_buckets": 1, "max_steps": 4},
                         augment={"spec_augment": {"enabled": False}})
    run([sys.executable, "-m", "caspi", "train", "--recipe", str(recipe), "--out", str(tmp_path / "one"), "--quiet"])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "caspi", "train", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet"])
    one, two = read_run.losses(tmp_path / "one"), read_run.losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3, 4]
    assert [x for _, x in two] == pytest.approx([x for _, x in one], rel=1e-5)
