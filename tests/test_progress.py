"""caspi.progress: the terminal test, the interval from the environment, durations in words, plain lines for
synth/import/audit/eval in a file (fake clock), and `caspi` refusing a bad interval before any work."""

from __future__ import annotations

import io

import pytest

from caspi.cli import main
from caspi.errors import ConfigError
from caspi.progress import EVERY_ENV, LINE_EVERY_S, LineProgress, duration, is_terminal, line_interval, progress
from caspi.testing import FakeClock


def test_terminal_detection(tmp_path):
    with open(tmp_path / "log", "w") as f:
        assert not is_terminal(f)
    assert not is_terminal(f)  # closed
    assert not is_terminal(io.StringIO())
    assert not is_terminal(object())


def test_the_interval_from_the_environment():
    assert line_interval({}) == LINE_EVERY_S == 30.0
    assert line_interval({EVERY_ENV: "300"}) == 300.0
    assert line_interval({EVERY_ENV: " "}) == LINE_EVERY_S
    for bad in ("0", "-5", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"{EVERY_ENV}='{bad}': expected a positive number of seconds"):
            line_interval({EVERY_ENV: bad})


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (59.4, "59 s"), (60, "1 min 00 s"), (605, "10 min 05 s"),
                                           (3599, "59 min 59 s"), (3600, "1 h 00 min"), (11040, "3 h 04 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_lines_every_interval_with_rate_and_eta_then_a_closing_line():
    clock, out = FakeClock(), io.StringIO()
    with LineProgress(400, "eval", "clip", stream=out, every_s=30.0, clock=clock) as bar:
        for _ in range(10):  # 10 updates of 8 clips, 5 s apart: a line at 30 s and at 60 s
            clock.now += 5.0
            bar.update(8)
        assert bar.n == 80
    assert out.getvalue().splitlines() == [
        "eval  48/400 clips (12 %)  1.6 clips/s  elapsed 30 s  ETA 3 min 40 s",  # 30 s: the first line
        "eval  done: 80 clips in 50 s (1.6 clips/s)",  # closed at 50 s, before the next line was due
    ]
    assert "\r" not in out.getvalue()


def test_no_total_counts_without_eta():
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(None, "import (hf_hub)", "clip", stream=out, every_s=1.0, clock=clock)
    clock.now += 2.0
    bar.update(10)
    bar.close()
    bar.close()  # once only
    assert out.getvalue().splitlines() == ["import (hf_hub)  10 clips  5.0 clips/s  elapsed 2 s",
                                           "import (hf_hub)  done: 10 clips in 2 s (5.0 clips/s)"]


def test_a_terminal_gets_tqdm_a_file_lines_quiet_nothing():
    from tqdm import tqdm

    out = io.StringIO()
    bar = progress(5, "synth", stream=out, terminal=True)
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress(5, "synth", stream=io.StringIO(), terminal=False, every_s=1.0), LineProgress)
    quiet = io.StringIO()
    with progress(5, "synth", enabled=False, stream=quiet) as off:
        off.update(5)
    assert quiet.getvalue() == ""


def test_caspi_refuses_a_bad_interval_before_running_a_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(EVERY_ENV, "soon")
    assert main(["stats", str(tmp_path / "missing.jsonl.gz")]) == 2  # a ConfigError, not the missing file
    assert f"{EVERY_ENV}='soon': expected a positive number of seconds" in capsys.readouterr().err
