"""The training progress display: a bar on a terminal, plain lines every N seconds in a file (fake clock), and the
real loop writing to a redirected stderr."""

from __future__ import annotations

import io
import sys

from caspi.config import load_recipe
from caspi.progress import EVERY_ENV
from caspi.train import loop
from caspi.train.progress import ProgressDisplay
from caspi.testing import FakeClock


def lines_display(total=100, initial=0, every_s=30.0):
    clock, out = FakeClock(), io.StringIO()
    display = ProgressDisplay(total, initial=initial, epochs=5, stream=out, every_s=every_s, clock=clock,
                              terminal=False)
    return display, clock, out


def step(display, clock, n, loss, *, seconds=10.0, epoch=1, phase="B"):
    clock.now += seconds
    display.step(n, epoch=epoch, phase=phase, loss=loss, lr=2e-4, clips_per_s=12.5, mem_gib=1.5)


def test_a_line_every_interval_with_the_mean_loss_rate_and_eta():
    display, clock, out = lines_display()
    assert display.mode == "lines"
    start = out.getvalue().splitlines()
    assert start == [f"train  start at step 0/100: a progress line every 30 s (stderr is not a terminal; "
                     f"{EVERY_ENV} sets the interval)"]
    step(display, clock, 1, 4.0)
    step(display, clock, 2, 2.0)
    assert len(out.getvalue().splitlines()) == 1  # 20 s: no line yet
    step(display, clock, 3, 3.0)  # 30 s: the first line; the mean of steps 1-3
    lines = out.getvalue().splitlines()
    assert lines[1] == ("train  step 3/100 (3 %)  epoch 1/5  phase B  loss 3.000 (mean of 3 steps)  lr 2.00e-04  "
                        "12.5 clips/s  mem 1.50 GiB  elapsed 30 s  ETA 16 min 10 s")  # 97 steps × 10 s
    step(display, clock, 4, None, epoch=2, phase="A")  # skipped: left out of the mean, counted
    step(display, clock, 5, 1.0, epoch=2, phase="A")
    assert len(out.getvalue().splitlines()) == 2
    step(display, clock, 6, 2.0, seconds=40.0, epoch=2, phase="A")  # 90 s: 60 s since the last line
    lines = out.getvalue().splitlines()
    assert lines[2] == ("train  step 6/100 (6 %)  epoch 2/5  phase A  loss 1.500 (mean of 2 steps, 1 skipped)  "
                        "lr 2.00e-04  12.5 clips/s  mem 1.50 GiB  elapsed 1 min 30 s  ETA 23 min 30 s")  # 94 × 15 s
    display.close("done")
    display.close("done")  # a second close prints nothing
    lines = out.getvalue().splitlines()
    assert lines[3:] == ["train  done at step 6/100: 6 steps in 1 min 30 s, 0.07 steps/s, last loss 2.000"]
    assert "\r" not in out.getvalue()


def test_a_resumed_run_counts_its_eta_from_this_start():
    display, clock, out = lines_display(total=200, initial=150, every_s=60.0)
    assert "start at step 150/200" in out.getvalue()
    for n in range(151, 161):
        step(display, clock, n, 1.0, seconds=6.0)  # 60 s for 10 steps: 6 s a step
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("train  step 160/200 (80 %)") and line.endswith("ETA 4 min 00 s")  # 40 × 6 s
    display.close("stopped by SIGUSR1")
    assert out.getvalue().splitlines()[-1] == ("train  stopped by SIGUSR1 at step 160/200: 10 steps in 1 min 00 s, "
                                               "0.17 steps/s, last loss 1.000")


def test_only_skipped_steps_and_no_steps_before_close():
    display, clock, out = lines_display()
    step(display, clock, 1, None, seconds=31.0)
    assert "  loss - (1 skipped)  " in out.getvalue().splitlines()[-1]
    display, clock, out = lines_display()
    display.close("stopped over budget")  # nothing ran: no rate, no loss
    assert out.getvalue().splitlines()[-1] == "train  stopped over budget at step 0/100: 0 steps in 0 s"


def test_a_terminal_gets_the_bar_and_quiet_gets_nothing():
    out = io.StringIO()
    bar = ProgressDisplay(10, epochs=1, stream=out, every_s=30.0, terminal=True)
    assert bar.mode == "bar"
    bar.step(1, epoch=1, phase="B", loss=2.5, lr=1e-3, clips_per_s=3.0, mem_gib=0.5)
    bar.close()
    assert "\r" in out.getvalue() and "loss 2.500 lr 1.00e-03 3.0 clips/s mem 0.50 GiB" in out.getvalue()
    for terminal in (True, False):
        out = io.StringIO()
        quiet = ProgressDisplay(10, epochs=1, enabled=False, stream=out, every_s=0.0, terminal=terminal)
        quiet.step(1, epoch=1, phase="B", loss=2.5, lr=1e-3, clips_per_s=3.0, mem_gib=0.5)
        quiet.close()
        assert quiet.mode == "off" and out.getvalue() == ""


def test_the_loop_writes_plain_lines_to_a_redirected_stderr(make_recipe, tmp_path, monkeypatch):
    """A real run with stderr in a file: a start line, a line per step (interval ~0), an end line, no redraws."""
    recipe = load_recipe(make_recipe(train={"max_steps": 3}, eval={"every_steps": 100}))
    monkeypatch.setenv(EVERY_ENV, "0.001")  # a step takes far longer: every step prints its line
    log = tmp_path / "stderr.log"
    with open(log, "w", encoding="utf-8") as f:
        monkeypatch.setattr(sys, "stderr", f)
        loop.train(recipe, tmp_path / "run", progress=True)
        monkeypatch.undo()
    text = log.read_text(encoding="utf-8")
    assert "\r" not in text
    progress = [line for line in text.splitlines() if line.startswith("train  ")]
    assert progress[0].startswith("train  start at step 0/3: a progress line every 0 s")
    assert [line.split("  ")[1] for line in progress[1:4]] == ["step 1/3 (33 %)", "step 2/3 (67 %)",
                                                               "step 3/3 (100 %)"]
    assert all("epoch 1/2  phase B  loss " in line and " clips/s " in line for line in progress[1:4])
    assert progress[4].startswith("train  done at step 3/3: 3 steps in ")
    assert len(progress) == 5
    # --quiet (progress=False): none of it
    with open(tmp_path / "quiet.log", "w", encoding="utf-8") as f:
        monkeypatch.setenv(EVERY_ENV, "0.001")
        monkeypatch.setattr(sys, "stderr", f)
        loop.train(recipe, tmp_path / "quiet", progress=False)
        monkeypatch.undo()
    quiet = (tmp_path / "quiet.log").read_text(encoding="utf-8")
    assert "caspi: finished at step 3" in quiet and "train  " not in quiet and "\r" not in quiet
