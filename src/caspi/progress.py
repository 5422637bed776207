"""Progress on stderr for every long command (synth, import, audit, eval; the training loop has its own richer
lines in `caspi.train.progress`, built on this): on a terminal, tqdm's bar redrawn in place; anywhere else (a file,
a pipe, a SLURM job log) a plain line every `LINE_EVERY_S` seconds and one at the end:

    eval  1,200/4,000 clips (30 %)  41.2 clips/s  elapsed 29 s  ETA 1 min 08 s
    eval  done: 4,000 clips in 1 min 37 s (41.2 clips/s)

Why: tqdm redraws its bar with a carriage return up to ten times a second. In a file every redraw stays (one 8-minute
demo wrote ~200 KB of them), `tail -f` shows none of them until the bar ends, and `less` shows one line thousands of
columns wide. `CASPI_PROGRESS_EVERY_S` sets the interval in seconds (a SLURM job script may want 300); `caspi`
checks it when it starts, so a bad value stops a command before its work, not an hour into it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from caspi.errors import ConfigError

LINE_EVERY_S = 30.0  # a line per half minute: a few KB an hour, and a stalled job shows within a minute
EVERY_ENV = "CASPI_PROGRESS_EVERY_S"


def is_terminal(stream: TextIO) -> bool:
    """True when `stream` is a terminal (a redrawn bar is readable there); False for files, pipes and closed or
    replaced streams without a file descriptor."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def line_interval(environ: dict[str, str] | None = None) -> float:
    """Seconds between two plain progress lines: `CASPI_PROGRESS_EVERY_S` when set, else `LINE_EVERY_S`."""
    value = (os.environ if environ is None else environ).get(EVERY_ENV)
    if value is None or not value.strip():
        return LINE_EVERY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{EVERY_ENV}={value!r}: expected a positive number of seconds (default {LINE_EVERY_S:g})")
    return seconds


def duration(seconds: float) -> str:
    """'45 s', '12 min 05 s', '3 h 04 min': to the second under an hour, to the minute above."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LineProgress:
    """tqdm's `update` / `close` / context-manager surface, printing plain lines (module docstring) instead of a
    redrawn bar. `total` None: counts without a percentage or ETA."""

    def __init__(self, total: int | None, desc: str, unit: str, *, stream: TextIO, every_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.stream, self.every_s = total, desc, unit, stream, every_s
        self.clock = clock
        self.n = 0
        self.started = self.last_line = clock()
        self.closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_line >= self.every_s:
            self._print(self.line())
            self.last_line = self.clock()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            text = f"{self.desc}  {self.n:,}/{self.total:,} {self.unit}s ({100 * self.n / self.total:.0f} %)"
            eta = duration((self.total - self.n) / rate) if rate > 0 else "?"
            return f"{text}  {rate:.1f} {self.unit}s/s  elapsed {duration(elapsed)}  ETA {eta}"
        return f"{self.desc}  {self.n:,} {self.unit}s  {rate:.1f} {self.unit}s/s  elapsed {duration(elapsed)}"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = self.clock() - self.started
        rate = f" ({self.n / elapsed:.1f} {self.unit}s/s)" if elapsed > 0 and self.n else ""
        self._print(f"{self.desc}  done: {self.n:,} {self.unit}s in {duration(elapsed)}{rate}")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class _Off:
    """Progress that shows nothing (`enabled=False`)."""

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int | None, desc: str, unit: str = "clip", *, enabled: bool = True, stream: TextIO | None = None,
             every_s: float | None = None, terminal: bool | None = None):
    """A progress counter with `update(n)` and `close()` (also a context manager): tqdm's bar on a terminal, plain
    lines elsewhere, nothing when not `enabled`."""
    if not enabled:
        return _Off()
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream) if terminal is None else terminal:
        from tqdm import tqdm  # only where a bar is drawn

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, stream=stream, every_s=line_interval() if every_s is None else every_s)
