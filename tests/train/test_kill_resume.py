"""Kill a real training process and restart it: SIGTERM (saves and exits 143), SIGKILL at a random moment, and
SIGKILL in the middle of a checkpoint write. Each resumed run must log exactly the losses of an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caspi.train import checkpoint as ckpt

TIMEOUT = 180  # seconds for one training process
# The kill points are drawn from this seed, so a failure reproduces; any point must work, so set CASPI_KILL_SEED to
# try others.
KILL_SEED = int(os.environ.get("CASPI_KILL_SEED", "14"))


def kill_point(test: str, low: int, high: int) -> int:
    """The logged step count in [low, high] after which `test` signals the trainer; printed (pytest shows it with a
    failure)."""
    k = random.Random(f"{KILL_SEED}:{test}").randint(low, high)  # a str seed hashes the same in every process
    print(f"{test}: signal after {k} logged steps (CASPI_KILL_SEED={KILL_SEED})")
    return k


def start(recipe: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "caspi", "train", "--recipe", str(recipe), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},  # as the in-process reference run (conftest)
    )


def wait_for(predicate, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count('"kind": "train"') if path.is_file() else 0


def finish(recipe: Path, out: Path) -> None:
    proc = start(recipe, out)
    output, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, output


def test_sigterm_saves_exits_143_and_resumes_exactly(reference_run, read_run, tmp_path):
    recipe, ref_dir, _ = reference_run
    k = kill_point("sigterm", 2, 8)
    proc = start(recipe, tmp_path / "run")
    wait_for(lambda: logged_steps(tmp_path / "run") >= k, proc, f"{k} logged steps")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, output
    assert time.monotonic() - sent < 10  # saved within seconds
    assert "SIGTERM received: saved" in output, output
    assert ckpt.find_latest(tmp_path / "run" / "checkpoints") is not None
    finish(recipe, tmp_path / "run")
    assert read_run.losses(tmp_path / "run") == read_run.losses(ref_dir), f"signal after step {k}"


def test_sigkill_then_resume_from_the_last_checkpoint(reference_run, read_run, tmp_path):
    recipe, ref_dir, _ = reference_run
    k = kill_point("sigkill", 4, 9)
    proc = start(recipe, tmp_path / "run")
    wait_for(lambda: logged_steps(tmp_path / "run") >= k, proc, f"{k} logged steps")
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    finish(recipe, tmp_path / "run")
    assert read_run.losses(tmp_path / "run") == read_run.losses(ref_dir), f"killed after step {k}"


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(reference_run, read_run, tmp_path):
    recipe, ref_dir, _ = reference_run
    root = tmp_path / "run" / "checkpoints"
    # Slow each checkpoint file write down so the kill lands inside the second checkpoint's write (step 6).
    proc = start(recipe, tmp_path / "run", env={"CASPI_TEST_SLOW_CHECKPOINT_S": "1.5"})
    wait_for(lambda: (root / ".tmp-step-000006").is_dir(), proc, "the step-6 checkpoint write")
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    assert (root / ".tmp-step-000006").is_dir() and not (root / "step-000006").exists()
    # The newest complete one (step 4: the first eval is a new best) is trusted, not the half-written one.
    assert ckpt.find_latest(root).name == "step-000004"
    finish(recipe, tmp_path / "run")
    assert not (root / ".tmp-step-000006").exists()
    assert read_run.losses(tmp_path / "run") == read_run.losses(ref_dir)
