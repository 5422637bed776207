"""Preemption: SIGTERM / SIGUSR1 set a flag; the training loop polls it at every micro-batch boundary, saves and
exits. Nothing is saved inside the signal handler (Lightning does, and can hang: Lightning #21406).

Under SLURM (`SLURM_JOB_ID` set) the job asks to be requeued (`scontrol requeue $SLURM_JOB_ID`) after the save, so
a job killed at its time limit (which SLURM does not requeue by itself) or preempted comes back and resumes; the
recipe's `#SBATCH --signal=B:USR1@120` gives the early warning (REFERENCE.md, "A one-node SLURM cluster").
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_REQUEUE = 143  # 128 + SIGTERM: what a scheduler expects from a process that stopped on TERM


class PreemptionFlag:
    """Installs handlers for SIGTERM and SIGUSR1 that only record the signal; `restore()` puts the old ones back."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> PreemptionFlag:
        if self._previous:
            return self  # installed already: recording our own handler as "previous" would make restore() a no-op
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "-"

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            # None: the old handler was set outside Python and cannot be put back; signal.signal(sig, None) would
            # raise TypeError (in cleanup, masking whatever ended the run). The default action is the closest.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def request_requeue() -> str | None:
    """Under SLURM, ask for this job to be requeued; returns a line saying what happened (None outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"SLURM job {job}: scontrol not found, cannot requeue (resubmit the job to resume)"
    try:
        result = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        # Called after the preemption save: a hung or unrunnable scontrol must not turn a clean stop into a crash.
        return f"SLURM job {job}: `scontrol requeue` failed: {type(exc).__name__}: {exc}"
    if result.returncode != 0:
        return f"SLURM job {job}: `scontrol requeue` failed: {result.stderr.strip() or result.returncode}"
    return f"SLURM job {job}: requeued; it will resume from the checkpoint"
