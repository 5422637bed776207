"""Preemption: SIGTERM/SIGUSR1 only set a flag, restore() puts the old handlers back, and the SLURM requeue
request reports each outcome (requeued, failed, scontrol missing, not under SLURM) without raising. Ctrl+C (SIGINT)
stops like SIGTERM, without a requeue; a second Ctrl+C aborts at once."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caspi.train import checkpoint as ckpt
from caspi.train import preempt
from caspi.train.preempt import PREEMPT_SIGNALS, PreemptionFlag, ignore_interrupt_in_worker, request_requeue


@pytest.fixture
def original_handlers():
    """Whatever handlers the test changes are put back afterwards, so a stray SIGTERM cannot be swallowed."""
    saved = {sig: signal.getsignal(sig) for sig in PREEMPT_SIGNALS}
    yield saved
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def send_and_wait(flag: PreemptionFlag, sig: int) -> None:
    os.kill(os.getpid(), sig)
    deadline = time.monotonic() + 5
    while sig not in flag.received and time.monotonic() < deadline:  # Python runs the handler at its next check
        time.sleep(0.001)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_the_flag_and_does_not_raise(original_handlers, sig):
    flag = PreemptionFlag()
    assert not flag.requested and flag.name == "-"
    flag.install()
    try:
        send_and_wait(flag, sig)  # the process survives: the default action of both would end it
        assert flag.requested
        assert flag.signal == sig
        assert flag.name == signal.Signals(sig).name
    finally:
        flag.restore()


def test_second_signal_is_recorded_too(original_handlers):
    flag = PreemptionFlag().install()
    try:
        send_and_wait(flag, signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert flag.name == "SIGTERM"
    finally:
        flag.restore()


def test_restore_puts_back_the_previous_handlers(original_handlers):
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, previous)
    flag = PreemptionFlag().install()
    for sig in PREEMPT_SIGNALS:
        assert signal.getsignal(sig) == flag._handle
    flag.install()  # twice: must not record its own handler as the one to restore
    flag.restore()
    for sig in PREEMPT_SIGNALS:
        assert signal.getsignal(sig) is previous
    os.kill(os.getpid(), signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    assert calls == [signal.SIGUSR1] and not flag.requested
    flag.restore()  # a second restore is harmless
    assert signal.getsignal(signal.SIGTERM) is previous


def test_restore_of_default_handlers(original_handlers):
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    flag = PreemptionFlag().install()
    flag.restore()
    assert all(signal.getsignal(sig) == signal.SIG_DFL for sig in PREEMPT_SIGNALS)


# ---------------------------------------------------------------------------------------------- SLURM requeue


def fake_scontrol(bin_dir: Path, log: Path, exit_code: int = 0, stderr: str = "") -> None:
    """An executable `scontrol` that appends its arguments to `log` and exits with `exit_code`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"sys.stderr.write({stderr!r})\n"
        f"sys.exit({exit_code})\n",
        encoding="utf-8",
    )
    script.chmod(0o755)


def test_no_slurm_no_requeue(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    assert request_requeue() is None
    assert not (tmp_path / "calls.txt").exists()


def test_requeue_left_to_the_job_script(monkeypatch, tmp_path):
    """`caspi slurm`'s torchrun layouts: the job shell requeues, the trainer must not (it would requeue a cancel)."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CASPI_SLURM_REQUEUE", "script")
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    assert request_requeue() == "SLURM job 4242: the job script requeues it once the trainers have exited"
    assert not (tmp_path / "calls.txt").exists()


def test_requeue_calls_scontrol(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("CASPI_SLURM_REQUEUE", raising=False)
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    line = request_requeue()
    assert (tmp_path / "calls.txt").read_text() == "requeue 4242\n"
    assert line == "SLURM job 4242: requeued; it will resume from the checkpoint"


def test_failing_scontrol(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt", exit_code=1, stderr="Requested operation is disabled\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    line = request_requeue()
    assert (tmp_path / "calls.txt").read_text() == "requeue 4242\n"
    assert line == "SLURM job 4242: `scontrol requeue` failed: Requested operation is disabled"


def test_failing_scontrol_without_stderr_reports_the_exit_code(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt", exit_code=3)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert request_requeue() == "SLURM job 7: `scontrol requeue` failed: 3"


def test_hung_scontrol_is_a_failure_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    def hang(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(preempt.subprocess, "run", hang)
    line = request_requeue()
    assert line.startswith("SLURM job 7: `scontrol requeue` failed: TimeoutExpired")


def test_missing_scontrol(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert request_requeue() == "SLURM job 4242: scontrol not found, cannot requeue (resubmit the job to resume)"


# ---------------------------------------------------------------------------------------------- Ctrl+C (SIGINT)


def test_first_ctrl_c_requests_a_stop_and_a_second_raises_keyboard_interrupt(original_handlers, capfd):
    flag = PreemptionFlag().install()
    try:
        send_and_wait(flag, signal.SIGINT)  # the process survives the first one
        assert (flag.name, flag.requeue_wanted) == ("SIGINT", False)  # a person's stop: no SLURM requeue
        assert "press Ctrl+C again to abort without saving" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here, long before 5 s
    finally:
        flag.restore()


@pytest.mark.parametrize("signals, wanted", [
    ((signal.SIGUSR1,), True),  # the time-limit warning: SLURM does not requeue a job at its limit by itself
    ((signal.SIGTERM,), False),  # scancel (stays cancelled), or scontrol requeue / preemption (SLURM requeues)
    ((signal.SIGUSR1, signal.SIGTERM), False),  # warned, then cancelled
    ((signal.SIGUSR1, signal.SIGUSR1), True),
])
def test_only_the_time_limit_warning_wants_a_requeue(original_handlers, signals, wanted):
    flag = PreemptionFlag().install()
    try:
        assert not flag.requeue_wanted
        for sig in signals:
            send_and_wait(flag, sig)
        assert (flag.name, flag.requeue_wanted) == (signal.Signals(signals[-1]).name, wanted)
    finally:
        flag.restore()


def test_dataloader_workers_ignore_ctrl_c(original_handlers):
    ignore_interrupt_in_worker(0)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def _kill_resume():
    """The trainer-subprocess helpers of test_kill_resume.py (start, wait_for, logged_steps, finish). The suite runs
    with --import-mode=importlib, where a sibling test module is not importable by name: load it by path."""
    path = Path(__file__).with_name("test_kill_resume.py")
    spec = importlib.util.spec_from_file_location("_kill_resume_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ctrl_c_saves_like_sigterm_without_requeue_and_resumes_exactly(reference_run, read_run, tmp_path):
    kr = _kill_resume()
    recipe, ref_dir, _ = reference_run
    run = tmp_path / "run"
    fake_scontrol(tmp_path / "bin", tmp_path / "calls.txt")  # under SLURM: a SIGTERM stop would requeue
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = kr.start(recipe, run, env=env)
    kr.wait_for(lambda: kr.logged_steps(run) >= 3, proc, "3 logged steps")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=kr.TIMEOUT)
    assert proc.returncode == 143, output  # saved and stopped, resumable: the same exit as SIGTERM
    assert "press Ctrl+C again to abort without saving" in output and "SIGINT received: saved" in output, output
    assert not (tmp_path / "calls.txt").exists()  # no `scontrol requeue` after a person's Ctrl+C
    kr.finish(recipe, run)
    assert read_run.losses(run) == read_run.losses(ref_dir)


def test_second_ctrl_c_aborts_without_waiting_for_the_save(make_recipe, tmp_path):
    kr = _kill_resume()
    recipe = make_recipe("abort", train={"save_every_steps": 1000}, data={"eval_manifest": None})  # no other saves
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    proc = kr.start(recipe, run, env={"CASPI_TEST_SLOW_CHECKPOINT_S": "3"})  # each checkpoint file: +3 s
    kr.wait_for(lambda: kr.logged_steps(run) >= 2, proc, "2 logged steps")
    proc.send_signal(signal.SIGINT)
    kr.wait_for(lambda: root.is_dir() and any(p.name.startswith(".tmp-step-") for p in root.iterdir()), proc,
                "the Ctrl+C checkpoint write")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=kr.TIMEOUT)
    assert proc.returncode == 130, output
    assert time.monotonic() - sent < 2.5, output  # before the slowed save could finish a single file
    assert "caspi: interrupted" in output and "received: saved" not in output, output
    assert ckpt.find_latest(root) is None  # the half-written checkpoint is not taken for a complete one
