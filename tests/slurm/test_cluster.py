"""The test cluster itself (`caspi.slurm_cluster`): a batch job runs and writes its log, and a job preempted with
`scontrol requeue` comes back within seconds as its restart (the timing every preemption test relies on)."""

from __future__ import annotations

import time

import pytest

from caspi.errors import SchedulerError
from caspi.slurm_cluster import parse_record

REQUEUE_BOUND_S = 15.0  # measured here: ~6 s from `scontrol requeue` to the restarted job's first line (cred_expire=5)


def wait_for_text(path, text: str, timeout: float) -> float:
    """Seconds until `text` appears in the file `path`; AssertionError with the file after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.exists() and text in path.read_text():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s: "
                         f"{path.read_text() if path.exists() else '(no file)'}")


def test_batch_job_runs_and_writes_its_log(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = slurm_cluster.run(["sbatch", "--parsable", "--job-name=echo", f"--output={out}",
                             "--wrap", "echo hello from $SLURM_JOB_ID on $SLURMD_NODENAME"], cwd=tmp_path)
    job_id = job.stdout.strip().split(";")[0]
    record = slurm_cluster.wait_job(job_id, {"COMPLETED"}, timeout=30)
    assert record["ExitCode"] == "0:0"
    assert record["NodeList"] == "node1"
    assert out.read_text() == f"hello from {job_id} on node1\n"


def test_waiting_for_a_failed_job_names_its_state_and_log(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job_id = slurm_cluster.run(["sbatch", "--parsable", f"--output={out}", "--wrap", "echo about to fail; exit 3"],
                               cwd=tmp_path).stdout.strip()
    with pytest.raises(SchedulerError, match=rf"job {job_id} ended FAILED, not COMPLETED .*ExitCode=3:0") as e:
        slurm_cluster.wait_job(job_id, {"COMPLETED"}, timeout=30)
    assert "about to fail" in str(e.value)  # the job log's tail


def test_requeued_job_restarts_within_seconds(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = slurm_cluster.run(["sbatch", "--parsable", "--requeue", "--open-mode=append", f"--output={out}",
                             "--wrap", "echo restart=${SLURM_RESTART_COUNT:-0}; exec sleep 300"], cwd=tmp_path)
    job_id = job.stdout.strip()
    slurm_cluster.wait_job(job_id, {"RUNNING"}, timeout=30)
    wait_for_text(out, "restart=0\n", timeout=30)

    slurm_cluster.run(["scontrol", "requeue", job_id])
    restart_s = wait_for_text(out, "restart=1\n", timeout=60)
    print(f"requeue → restarted job's first line: {restart_s:.1f} s")
    record = slurm_cluster.wait_job(job_id, {"RUNNING"}, timeout=5)
    assert record["Restarts"] == "1"
    lines = out.read_text().splitlines()  # --open-mode=append kept the first run's line, and slurmstepd's notice
    assert [line for line in lines if line.startswith("restart=")] == ["restart=0", "restart=1"]
    assert any("DUE TO JOB REQUEUE" in line for line in lines)
    assert restart_s < REQUEUE_BOUND_S

    slurm_cluster.run(["scancel", job_id])
    assert slurm_cluster.wait_job(job_id, {"CANCELLED"}, timeout=30)["JobState"] == "CANCELLED"


def test_parse_record_reads_scontrol_one_liners():
    record = parse_record("JobId=7 JobName=wrap JobState=PENDING Reason=BeginTime Restarts=1 ExitCode=0:0 "
                          "StdOut=/tmp/x/job.out Command=(null)")
    assert record == {"JobId": "7", "JobName": "wrap", "JobState": "PENDING", "Reason": "BeginTime",
                      "Restarts": "1", "ExitCode": "0:0", "StdOut": "/tmp/x/job.out", "Command": "(null)"}
