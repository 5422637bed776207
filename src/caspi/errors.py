"""Caspi's exception types.

Every error a user can cause (a bad recipe, a corrupt file, a gate that says STOP) is a `CaspiError` subclass
with a message that names the file, sample or field and what was expected. The CLI prints the message and exits
with the class's `exit_code`; it shows a traceback only with `--debug`. `assert` is for internal invariants only.
"""

from __future__ import annotations


class CaspiError(Exception):
    """Base class of user-facing errors. `exit_code` is what the CLI returns."""

    exit_code = 1


class ConfigError(CaspiError):
    """A recipe, override or command-line option is invalid (exit 2: usage/config error)."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class DataError(CaspiError):
    """Input data is unusable: a corrupt audio file, an empty transcript, a missing column, a duplicate id."""


class AudioError(DataError):
    """One audio file or buffer cannot be decoded or is empty/non-finite. `reason` is a short machine tag."""

    def __init__(self, message: str, reason: str = "unreadable"):
        self.reason = reason
        super().__init__(message)


class DependencyError(CaspiError):
    """A required external program or optional package is missing; the message says how to install it."""


class GateError(CaspiError):
    """The Phase 0 gate refuses training (STOP, or a report made from another manifest). Exit 3."""

    exit_code = 3


class CheckpointError(CaspiError):
    """A checkpoint or run directory is missing, incomplete or does not match the recipe."""


class TrainingError(CaspiError):
    """The run cannot go on (e.g. too many non-finite losses in a row, CUDA asked for but absent); the message says
    what to change."""


class SchedulerError(CaspiError):
    """A batch scheduler (SLURM) failed: a daemon of the test cluster did not start, a command such as `sbatch` was
    refused, or a job did not reach the expected state in time. The message names the command or job and the log."""
