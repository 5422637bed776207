"""Preemption: SIGTERM / SIGUSR1 set a flag; the training loop polls it at every micro-batch boundary, saves and
exits. Nothing is saved inside the signal handler (Lightning does, and can hang: Lightning #21406).

Ctrl+C (SIGINT) is the graceful stop of seed 001's emergency procedure ("press Ctrl+C ONCE, wait for the checkpoint
save"): the first one sets the same flag, so the run saves and exits as on SIGTERM (exit 143, resume with the same
command), but without a SLURM requeue (a person asked it to stop). A second Ctrl+C raises `KeyboardInterrupt` at
once (the CLI exits 130) without waiting for the save; a half-written checkpoint is cleared at the next start.
DataLoader workers ignore SIGINT (`ignore_interrupt_in_worker`): a terminal sends it to the whole process group, and
a worker that died of it would crash the loop before it could save.

Under SLURM (`SLURM_JOB_ID` set) a run warned by SIGUSR1 asks to be requeued (`scontrol requeue $SLURM_JOB_ID`)
after the save: `#SBATCH --signal=B:USR1@<grace>` warns a job before its time limit, and SLURM does not requeue a job
that reaches its limit by itself (REFERENCE.md, "A one-node SLURM cluster"). A SIGTERM does not ask: it comes from
`scancel` (a person cancelled the job: it must stay cancelled), or from `scontrol requeue` and partition preemption
with PreemptMode=REQUEUE, which requeue the job by themselves. A USR1 followed by a TERM is a cancel too. Where the job
script requeues the job itself (`CASPI_SLURM_REQUEUE=script`: the torchrun layouts of `caspi slurm`, whose job shell
turns the warning into the TERM torchrun passes on, so the trainers cannot tell a warning from a cancel), the trainer
leaves the requeue to it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
EXIT_REQUEUE = 143  # 128 + SIGTERM: what a scheduler expects from a process that stopped on TERM
_INTERRUPT_NOTICE = (
    b"\ncaspi: Ctrl+C: saving a checkpoint at the next micro-batch boundary, then stopping; "
    b"press Ctrl+C again to abort without saving\n"
)


class PreemptionFlag:
    """Installs handlers for SIGTERM, SIGUSR1 and SIGINT that only record the signal (a second SIGINT raises
    `KeyboardInterrupt`); `restore()` puts the old ones back."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the latest stop signal
        self.received: set[int] = set()  # every stop signal received
        self.interrupts = 0  # SIGINTs received
        self._previous: dict[int, object] = {}

    def install(self) -> PreemptionFlag:
        if self._previous:
            return self  # installed already: recording our own handler as "previous" would make restore() a no-op
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt
            # os.write, not print: the handler can run in the middle of a print to stderr (the progress bar), and
            # a buffered stream entered twice raises "reentrant call".
            os.write(2, _INTERRUPT_NOTICE)
        self.signal = signum
        self.received.add(signum)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "-"

    @property
    def requeue_wanted(self) -> bool:
        """Only the time-limit warning (SIGUSR1) asks to come back: a TERM (a cancel, or a requeue or preemption
        SLURM carries out itself) and Ctrl+C do not, also after a USR1."""
        return self.received == {signal.SIGUSR1}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            # None: the old handler was set outside Python and cannot be put back; signal.signal(sig, None) would
            # raise TypeError (in cleanup, masking whatever ended the run). The default action is the closest.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def ignore_interrupt_in_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SIGINT is for the training process alone (it stops the workers when it exits)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


REQUEUE_BY_ENV = "CASPI_SLURM_REQUEUE"  # "script": the job script requeues after the launcher exits, not the trainer


def request_requeue() -> str | None:
    """Under SLURM, ask for this job to be requeued; returns a line saying what happened (None outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if os.environ.get(REQUEUE_BY_ENV) == "script":
        return f"SLURM job {job}: the job script requeues it once the trainers have exited"
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
