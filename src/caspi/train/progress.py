"""What the training loop shows of its progress on stderr: on a terminal, tqdm's bar redrawn in place; anywhere else
(a file, a pipe, a SLURM job log) one plain line every `caspi.progress.LINE_EVERY_S` seconds, plus a line at the
start and one at the end. Nothing at all with `caspi train --quiet` or on ranks other than 0.

Why: tqdm redraws its bar with a carriage return up to ten times a second. In a file every redraw stays (about
120 bytes each: a one-minute, 180-step tiny-model run wrote 12 KB of them; these lines, 0.65 KB), `tail -f` shows
none of them until the bar ends, and `less` shows one line thousands of columns wide. A job log wants lines it can
be grepped for:

    train  step 1200/4000 (30 %)  epoch 2/5  phase A  loss 1.234 (mean of 31 steps)  lr 1.00e-04  35.2 clips/s
           mem 21.30 GiB  elapsed 30 min 04 s  ETA 1 h 10 min

(one line in the log; `caspi.progress` has the interval, the terminal test and the same lines for the other
commands). The loss is the mean of the steps since the previous line (skipped steps left out), so no
step's loss is hidden between two lines; clips/s is the loop's rate over its last `train.log_every_steps` steps, the
`samples_per_s` metrics.jsonl records; the ETA is the remaining steps at the mean pace of this start so far, evals
and saves included.

`CASPI_PROGRESS_EVERY_S` sets the interval in seconds (a SLURM job script may want 300).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from caspi.progress import EVERY_ENV, duration, is_terminal, line_interval


class ProgressDisplay:
    """The training loop's progress: `step()` after every optimizer step, `close()` when the loop ends (finished,
    preempted, over budget). `mode` is "bar" (tqdm, on a terminal), "lines" (plain lines) or "off"."""

    def __init__(self, total: int, *, initial: int = 0, epochs: int, enabled: bool = True,
                 stream: TextIO | None = None, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, terminal: bool | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.epochs, self.initial = total, epochs, initial
        self.every_s = line_interval() if every_s is None else every_s
        self.clock = clock
        terminal = is_terminal(self.stream) if terminal is None else terminal
        self.mode = "off" if not enabled else "bar" if terminal else "lines"
        self.step_now = initial
        self.losses: list[float] = []  # the finite losses since the last line
        self.skipped = 0  # steps since the last line whose update was skipped (non-finite loss or gradient)
        self.last_loss: float | None = None
        self.bar = None
        if self.mode == "bar":
            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                            file=self.stream)
        self.started = self.last_line = clock()
        if self.mode == "lines":
            self._print(f"train  start at step {initial}/{total}: a progress line every {duration(self.every_s)} "
                        f"(stderr is not a terminal; {EVERY_ENV} sets the interval)")

    def step(self, step: int, *, epoch: int, phase: str | None, loss: float | None, lr: float,
             clips_per_s: float, mem_gib: float) -> None:
        """Optimizer step `step` is done; `loss` None when its update was skipped."""
        self.step_now = step
        if loss is None:
            self.skipped += 1
        else:
            self.losses.append(loss)
            self.last_loss = loss
        if self.mode == "bar":
            text = "skipped" if loss is None else f"{loss:.3f}"
            self.bar.set_postfix_str(f"loss {text} lr {lr:.2e} {clips_per_s:.1f} clips/s mem {mem_gib:.2f} GiB",
                                     refresh=False)  # drawn by update()
            self.bar.update(1)
        elif self.mode == "lines" and self.clock() - self.last_line >= self.every_s:
            self._print(self.line(epoch=epoch, phase=phase, lr=lr, clips_per_s=clips_per_s, mem_gib=mem_gib))
            self.last_line, self.losses, self.skipped = self.clock(), [], 0

    def line(self, *, epoch: int, phase: str | None, lr: float, clips_per_s: float, mem_gib: float) -> str:
        """The plain progress line at the current step (see the module docstring)."""
        n, total = self.step_now, self.total
        percent = 100 * n / total if total else 100.0
        if self.losses:
            loss = f"loss {sum(self.losses) / len(self.losses):.3f} (mean of {len(self.losses)} "
            loss += f"step{'s' if len(self.losses) != 1 else ''}" + (f", {self.skipped} skipped)" if self.skipped
                                                                     else ")")
        else:
            loss = f"loss - ({self.skipped} skipped)" if self.skipped else "loss -"
        return (f"train  step {n}/{total} ({percent:.0f} %)  epoch {min(epoch, self.epochs)}/{self.epochs}  "
                f"phase {phase}  {loss}  lr {lr:.2e}  {clips_per_s:.1f} clips/s  mem {mem_gib:.2f} GiB  "
                f"elapsed {duration(self.clock() - self.started)}  ETA {self.eta()}")

    def eta(self) -> str:
        """The remaining steps at this start's mean pace so far; '?' before the first step."""
        done = self.step_now - self.initial
        if done <= 0:
            return "?"
        return duration((self.total - self.step_now) * (self.clock() - self.started) / done)

    def close(self, outcome: str = "finished") -> None:
        """End the bar, or print the last line: `outcome` says why the loop ended ("finished", "preempted", ...)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines":
            elapsed = self.clock() - self.started
            done = self.step_now - self.initial
            pace = f", {done / elapsed:.2f} steps/s" if done > 0 and elapsed > 0 else ""
            last = f", last loss {self.last_loss:.3f}" if self.last_loss is not None else ""
            self._print(f"train  {outcome} at step {self.step_now}/{self.total}: {done} steps in "
                        f"{duration(elapsed)}{pace}{last}")
            self.mode = "off"  # a second close() prints nothing

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
