"""Experiment tracking for the training loop: a metrics JSONL file, TensorBoard, and optionally Weights & Biases.

`Tracker.log(record)` takes one flat dict per event and fans it out:

* `RUN/metrics.jsonl` (always): one JSON object per line, in the order logged, keys in the order given. This is
  the file users and the golden-loss tests read. Records look like::

      {"kind": "train", "step": 12, "epoch": 1, "phase": "B", "loss": 2.31, "lr/projector": 0.0001, ...}
      {"kind": "eval", "step": 200, "wer": 0.5, "cer": 0.2, "wer/studio": 0.41}
      {"kind": "event", "step": 300, "event": "phase_switch", "message": "..."}

  Every record needs a string `kind` and an integer `step`. Floats round-trip exactly (`json` writes the shortest
  repr). Non-finite floats are not valid JSON, so they are written as the strings `"nan"`, `"inf"` and `"-inf"`:
  a diverged loss stays distinguishable from a missing one, and `float(value)` reads all three back.
* TensorBoard under `RUN/tensorboard/` (`tensorboard=True`): every finite int/float field other than `step` and
  `epoch` becomes the scalar `f"{kind}/{key}"` (e.g. `train/loss`, `train/lr/projector`, `eval/wer/studio`) at
  `global_step=step`.
* W&B (`wandb=True`): the same scalars under the same names, with `step=step`, in a run under `RUN/wandb/`.
  `WANDB_MODE=offline` is honoured (nothing leaves the machine; `wandb sync` uploads later). Caspi never reads or
  writes API keys: W&B finds its credentials in the environment or `~/.netrc` on its own.

Resume. A checkpoint stores `tracker.offset()` (the metrics file's size in bytes after an fsync) and, when W&B is
on, `tracker.wandb_id`. The resumed run passes them back as `resume_offset`, `resume_step` (the checkpoint's step)
and `wandb_id`:

* metrics.jsonl is truncated to `resume_offset` bytes, dropping the lines written after the checkpoint. The loop
  recomputes those steps and logs them again, so the file ends up byte-identical to an uninterrupted run's (for a
  deterministic loop). `resume_offset=None` appends to whatever is there (a fresh run in a new directory, or a run
  whose checkpoint predates tracking); `resume_offset=0` starts the file over.
* TensorBoard discards events with `global_step > resume_step` (`purge_step=resume_step + 1`): records logged at
  the checkpoint's own step were written before the checkpoint and are not logged again, so they are kept.
* W&B continues the run with the same id (`resume="allow"`). W&B cannot delete history, so records for steps it
  already has (below `run.starting_step`) are not sent again; for a deterministic loop they are the same values.

Only rank 0 tracks: other ranks pass `enabled=False`, which makes every method a no-op and creates nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path
from typing import IO, Any

from caspi.errors import CheckpointError, DependencyError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_AXIS_KEYS = ("step", "epoch")  # the x axis, not a metric: never a scalar of its own
_SECRET_KEY = re.compile(r"token|secret|password|api_key", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(d: Mapping) -> dict:
    """A copy of `d` whose values under keys matching token/secret/password/api_key (any case) are "<redacted>".

    Recurses into nested dicts and into lists/tuples of dicts. Applied to the config before it goes to W&B: recipes
    hold no secrets, but a config echoed to a third-party service should not be the place we find out otherwise.
    Numbers, bools and None under a matching key are kept: they are counts like `max_new_tokens`, not credentials.
    """
    return {k: REDACTED if _is_secret(k, v) else _redact_value(v) for k, v in d.items()}


def _is_secret(key: Any, value: Any) -> bool:
    return _SECRET_KEY.search(str(key)) is not None and not (value is None or isinstance(value, (int, float)))


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """`value` as plain JSON data: non-finite floats become "nan"/"inf"/"-inf"; numpy/torch scalars become Python."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)  # a float subclass (np.float64) would otherwise keep its type
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # np.float32(1.0), torch.tensor(1.0)
        return _plain(value.item())
    raise TypeError(f"cannot log {type(value).__name__} value {value!r}: use numbers, strings, bools or None")


def _scalars(record: Mapping) -> dict[str, int | float]:
    """The TensorBoard/W&B scalars of a plain record: finite int/float fields, tagged `kind/key`."""
    kind = record["kind"]
    return {
        f"{kind}/{key}": value
        for key, value in record.items()
        if key not in _AXIS_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
        # non-finite floats are strings by now (see `_plain`), so they are skipped here
    }


class Tracker:
    """Writes training/eval records to metrics.jsonl, TensorBoard and W&B (see the module docstring).

    Use as a context manager or call `close()`. `wandb_id` is the W&B run id to store in checkpoints (None without
    W&B or when disabled).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "caspi",
        run_name: str = "run",
        config: dict | None = None,
        resume_offset: int | None = None,
        resume_step: int | None = None,
        wandb_id: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / METRICS_FILE
        self.wandb_id: str | None = None
        self._file: IO[bytes] | None = None
        self._tb = None  # torch.utils.tensorboard.SummaryWriter
        self._wandb_run = None
        self._wandb_first_step = 0
        if not enabled:
            return
        # Import the optional backends first, so a missing package fails before anything is written.
        writer_cls = _import_summary_writer() if tensorboard else None
        wandb_module = _import_wandb() if wandb else None

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = _open_metrics(self.metrics_path, resume_offset)
        try:
            if writer_cls is not None:
                purge_step = None if resume_step is None else resume_step + 1  # keep the checkpoint step's events
                self._tb = writer_cls(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)
            if wandb_module is not None:
                # id=None lets W&B pick a fresh id (or take WANDB_RUN_ID); `wandb.util.generate_id` is gone in 0.31.
                self._wandb_run = wandb_module.init(
                    project=wandb_project,
                    name=run_name,
                    dir=str(self.run_dir),
                    config=redact(config or {}),
                    id=wandb_id,
                    resume="allow",
                )
                self.wandb_id = self._wandb_run.id
                # A resumed online run already holds steps < starting_step; W&B would drop them with a warning each.
                self._wandb_first_step = int(getattr(self._wandb_run, "starting_step", 0) or 0)
        except BaseException:
            self.close()
            raise

    def log(self, record: dict) -> None:
        """Append `record` (a flat dict with a str "kind" and an int "step") to every enabled sink."""
        if not self.enabled:
            return
        kind, step = record.get("kind"), record.get("step")
        if not isinstance(kind, str) or not isinstance(step, Integral) or isinstance(step, bool):
            raise ValueError(f"a tracked record needs a str 'kind' and an int 'step', got {record!r}")
        plain = _plain(record)
        assert self._file is not None, "log() after close()"
        line = json.dumps(plain, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()  # visible to `tail -f` and survives a crash of this process; fsync only in offset()
        scalars = _scalars(plain)
        if not scalars:
            return
        step = plain["step"]  # a Python int now, even if the caller passed np.int64
        if self._tb is not None:
            for tag, value in scalars.items():
                self._tb.add_scalar(tag, value, global_step=step)
        if self._wandb_run is not None and step >= self._wandb_first_step:
            self._wandb_run.log(scalars, step=step)

    def offset(self) -> int:
        """Make metrics.jsonl durable (flush + fsync) and return its size in bytes, for the checkpoint to store.

        Also flushes TensorBoard, so a checkpoint's events are on disk when the checkpoint is. 0 when disabled.
        """
        if not self.enabled:
            return 0
        assert self._file is not None, "offset() after close()"
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()
        return os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        """Flush and close every sink; finishes the W&B run. Safe to call twice."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _open_metrics(path: Path, resume_offset: int | None) -> IO[bytes]:
    """Open metrics.jsonl for appending, first truncating it to `resume_offset` bytes when resuming."""
    size = path.stat().st_size if path.exists() else 0
    if resume_offset is not None:
        if resume_offset < 0 or resume_offset > size:
            raise CheckpointError(
                f"{path}: the checkpoint expects the metrics file to be at least {resume_offset} bytes, "
                f"but it is {size} bytes (was it replaced or truncated after the checkpoint was written?)"
            )
        if resume_offset > 0:
            with path.open("rb") as f:
                f.seek(resume_offset - 1)
                if f.read(1) != b"\n":
                    raise CheckpointError(
                        f"{path}: the checkpoint's offset {resume_offset} (file size {size} bytes) is not at the end "
                        "of a line; the metrics file does not belong to this checkpoint"
                    )
        if path.exists():
            os.truncate(path, resume_offset)
        return path.open("ab")
    f = path.open("ab")
    if size > 0:
        with path.open("rb") as r:
            r.seek(size - 1)
            if r.read(1) != b"\n":
                # A process killed mid-write left half a line; start ours on a fresh line so they stay parseable.
                f.write(b"\n")
    return f


def _import_summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises ImportError itself when the tensorboard package is missing
        raise DependencyError(
            f"TensorBoard logging needs the `tensorboard` package ({e}): `pip install tensorboard`, "
            "or set tracking.tensorboard=false in the recipe"
        ) from e
    return SummaryWriter


def _import_wandb():
    try:
        import wandb
    except ImportError as e:
        raise DependencyError(
            f"W&B logging needs the `wandb` package ({e}): `pip install 'caspi[wandb]'`, "
            "or set tracking.wandb=false in the recipe"
        ) from e
    return wandb
