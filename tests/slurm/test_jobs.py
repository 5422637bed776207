"""Real training jobs on the one-node test cluster, submitted with `caspi slurm --submit` (the script of
`caspi.slurm`): a job preempted with `scontrol requeue`, a job that gets its early warning (USR1) and requeues itself,
a 2-process DDP job preempted mid-run, and a 2-node × 1-process job (srun → bash → torchrun, c10d rendezvous) on a
second cluster of two slurmd on this host, preempted or warned. Each comes back (SLURM_RESTART_COUNT=1), resumes from
its latest checkpoint, finishes, and logs exactly the losses of an uninterrupted run of the same recipe, which runs
beside it. A job cancelled with `scancel` (one process, and 2 nodes) saves and stays cancelled.

The trainers run a tiny Qwen3-ASR (recipes/demo-cpu.yaml at size "xs") for 12 steps on the shared corpus. A run that
short would finish before a signal could land in it, so the jobs' first start slows each checkpoint write down
(CASPI_TEST_SLOW_CHECKPOINT_S: about 0.8 s a checkpoint, one every 2 steps): the signal is sent once the first
checkpoint exists, with seconds of training still ahead.

The time limit's warning itself (`#SBATCH --time` and `--signal=B:USR1@grace` of the generated script) reaches the
job shell only at slurmctld's 30-second time-limit check, some 5 to 35 s after a 1-minute job starts: too uncertain to
land in a training run of seconds. So the training job gets its USR1 from `scancel --batch --signal=USR1`, which
delivers it as the warning does (to the job shell, which the single-process script `exec`s into the trainer), and a
probe job with the generated script's own #SBATCH lines, submitted when this module starts and checked at its end,
shows that the warning really comes before the limit and that a job requeueing itself on it comes back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from caspi.config import load_recipe
from caspi.errors import DependencyError
from caspi.slurm import job_script
from caspi.slurm_cluster import TERMINAL_STATES, SlurmCluster, free_port

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPE = REPO / "recipes" / "demo-cpu.yaml"
STEPS = 12
SAVE_EVERY = 2
SLOW_CHECKPOINT_S = "0.25"  # per checkpoint file (3 files): ~0.8 s a checkpoint, 6 checkpoints in the run
JOB_TIMEOUT = 180  # seconds for one job, both of its starts
REQUEUE_BOUND_S = 20.0  # requeue → the next start's first line; measured ~6 s (cred_expire=5, 1 s scheduler)


def job_recipe(corpus, path: Path, **sections) -> Path:
    """recipes/demo-cpu.yaml made tiny: the "xs" model on the shared corpus, 12 steps of 2 × 2 clips, a checkpoint
    every 2 steps, one duration bucket and no SpecAugment (so the batches are the same for 1 and 2 processes), the
    final eval on 4 clips only. `sections` update the recipe's sections."""
    recipe = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))
    updates = {
        "model": {"tiny": "xs"},
        "data": {"train_manifest": str(corpus.train_manifest), "eval_manifest": str(corpus.eval_manifest)},
        "train": {"micro_batch": 2, "effective_batch": 4, "max_steps": STEPS, "save_every_steps": SAVE_EVERY,
                  "log_every_steps": 1, "warmup_steps": 2, "num_buckets": 1},
        "augment": {"spec_augment": {"enabled": False}},
        "eval": {"every_steps": 1000, "samples": 4, "batch_size": 4, "max_new_tokens": 8},
        # The slowed-down checkpoints are for the first start only (the signal must find it training): the next
        # start finishes at full speed.
        "slurm": {"cpus_per_task": 1, "grace_seconds": 30,
                  "setup": ['if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then unset CASPI_TEST_SLOW_CHECKPOINT_S; fi']},
    }
    for changes in (updates, sections):
        for section, values in changes.items():
            recipe.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def job_env(cluster) -> dict[str, str]:
    """The environment `caspi slurm --submit` runs in; sbatch passes it on to the job (--export=ALL)."""
    return {**cluster.env, "OMP_NUM_THREADS": "1", "CASPI_TEST_SLOW_CHECKPOINT_S": SLOW_CHECKPOINT_S}


def submit(cluster, recipe: Path, run: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "caspi", "slurm", "--recipe", str(recipe), "--out", str(run),
                          "--submit", *flags], capture_output=True, text=True, env={**job_env(cluster), **(env or {})},
                         timeout=120, cwd=run.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = out.stdout.strip()
    assert job_id.isdigit(), out.stdout  # stdout is the job id alone
    return job_id


def reference(recipe: Path, run: Path, processes: int = 1, *overrides: str) -> subprocess.Popen:
    """An uninterrupted run of the recipe outside SLURM, started now (it trains beside the job) with the job's one
    thread per process; `.communicate()` it before reading its losses."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else []
    return subprocess.Popen([sys.executable, *launcher, "-m", "caspi", "train", "--recipe", str(recipe),
                             "--out", str(run), "--quiet", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, output


def losses(run: Path) -> list[tuple[int, float]]:
    records = map(json.loads, (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def job_log(run: Path, job_id: str) -> str:
    path = run / f"slurm-{job_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate, cluster, job_id: str, run: Path, what: str, timeout: float = JOB_TIMEOUT) -> float:
    """Seconds until `predicate()` holds; fails, with the job's state and log, when the job ends first or after
    `timeout` s."""
    start = time.monotonic()
    while not predicate():
        state = cluster.job(job_id)["JobState"]
        if state in TERMINAL_STATES or time.monotonic() - start > timeout:  # a requeue passes COMPLETING, PENDING
            pytest.fail(f"job {job_id} is {state} and still no {what}:\n{job_log(run, job_id)[-4000:]}")
        time.sleep(0.05)
    return time.monotonic() - start


def first_checkpoint(run: Path):
    return lambda: (run / "checkpoints" / f"step-{SAVE_EVERY:06d}").is_dir()


def starts(log: str) -> list[str]:
    """The job's start lines, e.g. ['0', '1']: the script prints `start N (SLURM_RESTART_COUNT=...)` each time."""
    return re.findall(r"caspi job \d+: start (\d+) \(SLURM_RESTART_COUNT=", log)


def preempt_and_finish(cluster, job_id: str, run: Path, signal_job: list[str]) -> tuple[float, float]:
    """Send `signal_job` once the first checkpoint exists; wait until the job completes. (seconds from the signal
    to the second start's first line, seconds from the signal to COMPLETED)."""
    wait_until(first_checkpoint(run), cluster, job_id, run, "first checkpoint")
    cluster.run(signal_job)
    sent = time.monotonic()
    wait_until(lambda: starts(job_log(run, job_id)) == ["0", "1"], cluster, job_id, run, "second start")
    restart_s = time.monotonic() - sent
    record = cluster.wait_job(job_id, {"COMPLETED"}, timeout=JOB_TIMEOUT)
    done_s = time.monotonic() - sent
    log = job_log(run, job_id)
    print(f"job {job_id}: signal → start 1 in {restart_s:.1f} s, → COMPLETED in {done_s:.1f} s")
    assert record["Restarts"] == "1", log
    assert starts(log) == ["0", "1"], log
    assert re.search(r"Resuming from .*/checkpoints/step-0000\d\d", log), log
    assert not re.search(rf"Resuming from .*step-0000{STEPS}", log), log  # preempted mid-run, not after the end
    return restart_s, done_s


def cancel_and_check_it_stays_cancelled(cluster, job_id: str, run: Path) -> str:
    """`scancel` the job once its first checkpoint exists; wait for the trainers' save, then longer than a requeue
    takes to bring a job back (REQUEUE_BOUND_S): the job must still be CANCELLED, started once. The job's log."""
    wait_until(first_checkpoint(run), cluster, job_id, run, "first checkpoint")
    cluster.run(["scancel", job_id])
    cluster.wait_job(job_id, {"CANCELLED"}, timeout=JOB_TIMEOUT)  # at once; the trainers save within KillWait (30 s)
    deadline = time.monotonic() + JOB_TIMEOUT
    while "received: saved" not in job_log(run, job_id):
        assert time.monotonic() < deadline, f"job {job_id}: no save after scancel:\n{job_log(run, job_id)[-4000:]}"
        time.sleep(0.1)
    time.sleep(REQUEUE_BOUND_S)
    record, log = cluster.job(job_id), job_log(run, job_id)
    assert (record["JobState"], record["Restarts"]) == ("CANCELLED", "0"), log
    assert starts(log) == ["0"], log
    assert "requeueing" not in log and "requeued" not in log, log
    return log


@pytest.fixture(scope="module", autouse=True)
def time_limit_probe(slurm_cluster, synth_corpus, tmp_path_factory):
    """Submitted when the module starts, checked by its last test: a job with the generated script's own #SBATCH
    lines (`--time=1`, `--signal=B:USR1@55`) whose shell, warned, requeues itself and exits; started again
    (SLURM_RESTART_COUNT=1), it exits 0. (job id, its log). It waits for the warning on one of the
    node's CPUs while the other tests run."""
    folder = tmp_path_factory.mktemp("time-limit-probe")
    recipe_path = job_recipe(synth_corpus, folder / "recipe.yaml", slurm={"time": "1", "grace_seconds": 55})
    header = [line for line in job_script(load_recipe(recipe_path), recipe_path, folder / "run").splitlines()
              if line.startswith("#SBATCH")]
    assert "#SBATCH --time=1" in header and "#SBATCH --signal=B:USR1@55" in header and "#SBATCH --requeue" in header
    (folder / "run").mkdir()
    script = folder / "probe.sbatch"
    script.write_text("\n".join([
        "#!/bin/bash", *header,
        'echo "start ${SLURM_RESTART_COUNT:-0} at $(date +%s)"',
        'if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then exit 0; fi',
        'trap \'echo "USR1 at $(date +%s)"; scontrol requeue "$SLURM_JOB_ID"; exit 143\' USR1',
        "while :; do sleep 0.2; done",
    ]) + "\n")
    job_id = slurm_cluster.run(["sbatch", "--parsable", str(script)], cwd=folder).stdout.strip()
    return job_id, folder / "run" / f"slurm-{job_id}.log"


def test_preempted_job_resumes_with_the_losses_of_an_uninterrupted_run(slurm_cluster, synth_corpus, tmp_path):
    recipe = job_recipe(synth_corpus, tmp_path / "recipe.yaml")
    job_id = submit(slurm_cluster, recipe, tmp_path / "run")
    ref = reference(recipe, tmp_path / "reference")
    preempt_and_finish(slurm_cluster, job_id, tmp_path / "run", ["scontrol", "requeue", job_id])
    finish(ref)
    log = job_log(tmp_path / "run", job_id)
    assert "SIGTERM received: saved" in log, log
    assert [s for s, _ in losses(tmp_path / "run")] == list(range(1, STEPS + 1))
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


def test_warned_job_saves_requeues_itself_and_resumes(slurm_cluster, synth_corpus, tmp_path):
    recipe = job_recipe(synth_corpus, tmp_path / "recipe.yaml")
    job_id = submit(slurm_cluster, recipe, tmp_path / "run")
    ref = reference(recipe, tmp_path / "reference")
    # USR1 to the job shell alone, as `--signal=B:USR1@grace` sends it; nobody else requeues this job.
    preempt_and_finish(slurm_cluster, job_id, tmp_path / "run", ["scancel", "--batch", "--signal=USR1", job_id])
    finish(ref)
    log = job_log(tmp_path / "run", job_id)
    assert "SIGUSR1 received: saved" in log, log
    assert f"SLURM job {job_id}: requeued" in log, log  # the trainer's own `scontrol requeue`
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


def test_cancelled_job_saves_and_stays_cancelled(slurm_cluster, synth_corpus, tmp_path):
    """`scancel` sends TERM, as `scontrol requeue` does: the trainer saves (a resubmitted job resumes), but must not
    ask for a requeue, which would bring a cancelled job back."""
    recipe = job_recipe(synth_corpus, tmp_path / "recipe.yaml")
    job_id = submit(slurm_cluster, recipe, tmp_path / "run")
    log = cancel_and_check_it_stays_cancelled(slurm_cluster, job_id, tmp_path / "run")
    assert "SIGTERM received: saved" in log, log
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert saved and saved[-1].name != f"step-{STEPS:06d}", log  # saved mid-run


def test_preempted_ddp_job_resumes_with_the_losses_of_an_uninterrupted_two_process_run(slurm_cluster, synth_corpus,
                                                                                        tmp_path):
    # Accumulation 2 over 2 processes (effective batch 8 of micro-batches of 2): every step is a DDP all-reduce.
    recipe = job_recipe(synth_corpus, tmp_path / "recipe.yaml", train={"effective_batch": 8},
                        slurm={"cpus_per_task": 2})
    job_id = submit(slurm_cluster, recipe, tmp_path / "run", "--gpus-per-node", "2")
    script = (tmp_path / "run" / "job.sbatch").read_text()
    assert "--nproc_per_node 2" in script and "hardware.gpus_per_node=2" in script
    ref = reference(recipe, tmp_path / "reference", 2, "hardware.gpus_per_node=2")
    preempt_and_finish(slurm_cluster, job_id, tmp_path / "run", ["scontrol", "requeue", job_id])
    finish(ref)
    log = job_log(tmp_path / "run", job_id)
    assert "SIGTERM received: saved" in log, log
    assert "2 process(es)" in log, log
    assert [s for s, _ in losses(tmp_path / "run")] == list(range(1, STEPS + 1))
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


@pytest.fixture(scope="module")
def two_node_cluster(slurm_cluster, tmp_path_factory):
    """A second cluster, of two nodes (node1 on 127.0.0.1, node2 on 127.0.0.2: two slurmd on this host), for the
    multi-node job; started after the session's cluster has made sure SLURM is installed."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-2-nodes"), nodes=2)
    try:
        cluster.start()
    except DependencyError as e:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"cannot run a 2-node SLURM test cluster here: {e}; required under CI=true", pytrace=False)
        pytest.skip(f"cannot run a 2-node SLURM test cluster here: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_cancelled_two_node_job_saves_and_stays_cancelled(two_node_cluster, synth_corpus, tmp_path):
    """`scancel` of the multi-node layout: TERM to the job shell (which passes USR1 to srun) and to every process of
    the job; the trainers save, nobody requeues."""
    recipe = job_recipe(synth_corpus, tmp_path / "recipe.yaml", train={"effective_batch": 8})
    job_id = submit(two_node_cluster, recipe, tmp_path / "run", "--nodes", "2", "--gpus-per-node", "1",
                    env={"CASPI_RDZV_PORT": str(free_port())})
    log = cancel_and_check_it_stays_cancelled(two_node_cluster, job_id, tmp_path / "run")
    assert re.search(r"SIG(TERM|USR1) received: saved", log), log


@pytest.mark.parametrize("stop", ["requeue", "warning"])
def test_stopped_two_node_job_resumes_with_the_losses_of_an_uninterrupted_two_process_run(two_node_cluster,
                                                                                          synth_corpus, tmp_path,
                                                                                          stop):
    # One process on each of 2 nodes, accumulation 2 (effective batch 8 of micro-batches of 2): the script's
    # multi-node path, srun → bash → torchrun with the c10d rendezvous on node1, every step a DDP all-reduce. Stopped
    # by an outside `scontrol requeue` (TERM to every process of the job, srun's turned into USR1 by the job shell),
    # or warned as the time limit warns (USR1 to the job shell, passed to srun, which passes it to every process of
    # its step; the per-node bash passes TERM to torchrun; the job shell requeues once srun has ended).
    recipe = job_recipe(synth_corpus, tmp_path / "recipe.yaml", train={"effective_batch": 8})
    # A free rendezvous port rather than the script's 15000 + job id: another test cluster's job 1 may run now.
    job_id = submit(two_node_cluster, recipe, tmp_path / "run", "--nodes", "2", "--gpus-per-node", "1",
                    env={"CASPI_RDZV_PORT": str(free_port())})
    script = (tmp_path / "run" / "job.sbatch").read_text()
    assert "srun --nodes=2" in script and "--rdzv_backend c10d" in script and "hardware.nodes=2" in script
    ref = reference(recipe, tmp_path / "reference", 2, "hardware.nodes=2")
    signal_job = ["scontrol", "requeue", job_id] if stop == "requeue" else \
        ["scancel", "--batch", "--signal=USR1", job_id]
    preempt_and_finish(two_node_cluster, job_id, tmp_path / "run", signal_job)
    finish(ref)
    log = job_log(tmp_path / "run", job_id)
    assert two_node_cluster.job(job_id)["NodeList"] == "node[1-2]"
    assert log.count("caspi job: rendezvous on node1:") == 2, log  # each start
    assert "2 process(es)" in log, log
    # The trainers get srun's USR1 and TERM (torchrun's; after a requeue also slurmd's) within milliseconds, in either
    # order: they save on the first
    assert re.search(r"SIG(TERM|USR1) received: saved", log), log
    if stop == "warning":  # the job shell's own `scontrol requeue`; the trainers leave it to the shell
        assert f"caspi job: warned (SIGUSR1) before the time limit: requeueing job {job_id}" in log, log
        assert f"SLURM job {job_id}: requeued" not in log, log
    else:  # SLURM requeued it; nobody else asked
        assert "requeueing" not in log and f"SLURM job {job_id}: requeued" not in log, log
    # Each node's torchrun outlived srun's USR1 and ended by its TERM once its trainer had saved: the SignalException
    # it exits with, one per torchrun process. (Killed by the USR1, as before caspi_no_usr1, it logs nothing, and its
    # orphaned trainer still saves on this cluster: linuxproc loses track of orphans, where a cgroup would kill them.)
    assert len(set(re.findall(r"SignalException: Process (\d+) got signal: (?:15|Signals.SIGTERM)", log))) == 2, log
    assert [s for s, _ in losses(tmp_path / "run")] == list(range(1, STEPS + 1))
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")


def test_time_limit_warning_comes_before_the_limit_and_the_job_comes_back(slurm_cluster, time_limit_probe):
    job_id, log_path = time_limit_probe
    record = slurm_cluster.wait_job(job_id, {"COMPLETED"}, timeout=120)
    log = log_path.read_text()
    print(f"probe job {job_id}:\n{log}")
    first, warned, second = (int(m) for m in re.findall(r"(?:start 0|USR1|start 1) at (\d+)", log))
    assert record["Restarts"] == "1", log
    assert 0 < warned - first < 60  # the warning came before the 1-minute limit
    assert second - warned < REQUEUE_BOUND_S  # and the requeued job started again within seconds
