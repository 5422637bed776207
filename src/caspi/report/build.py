"""`build_report`: folders in, OUT/report.html out, with the audio clips (OUT/audio/) and PNG files it shows.

    result = build_report(["runs/phase0", "runs/r1-vs-r2", "runs/round2"], "runs/report")
    result = build_report(["runs"], "runs/report")  # every audit, compare and run folder directly under runs/

OUT must be new, empty, or an earlier report (it holds report.html): the files an earlier report wrote there
(report.html, audio/, curves-*.png, comparison-*.png) are replaced, nothing else in it is touched, and any other
non-empty folder is refused, so that a mistyped --out never mixes a report into a run folder.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from caspi import __version__
from caspi.data.cuts import write_text_atomic
from caspi.errors import ConfigError
from caspi.report import page
from caspi.report.audit import AuditSection, read_audit
from caspi.report.commands import COMMANDS_FILE, read_commands, shell_line
from caspi.report.compare import CompareSection, read_compare
from caspi.report.inputs import recognise
from caspi.report.runs import RunSection, read_run

REPORT_FILE = "report.html"
OWN_FILES = ("audio", "curves-*.png", "comparison-*.png")  # what an earlier report wrote beside report.html
EXIT_MEANINGS = {0: "ok", 1: "failure", 2: "usage error", 3: "the gate says STOP",
                 4: "over budget: saved a checkpoint; raise hardware.budget_usd to resume", 130: "interrupted",
                 143: "preempted: saved a checkpoint; the next start resumes"}


@dataclass
class ReportResult:
    page: Path
    out_dir: Path
    audits: list[AuditSection]
    compares: list[CompareSection]
    runs: list[RunSection]
    notes: list[str] = field(default_factory=list)

    @property
    def audio_files(self) -> list[Path]:
        return sorted((self.out_dir / "audio").glob("*")) if (self.out_dir / "audio").is_dir() else []


def build_report(paths: list[str | Path], out_dir: str | Path, *, max_samples: int = 100,
                 command: list[str] | None = None, title: str | None = None) -> ReportResult:
    """Write OUT/report.html from audit, compare and run folders (`caspi.report.inputs`). `max_samples`: flagged
    samples listed with their audio per audit; `command`: the command line that makes this report (argv without
    the program), listed with the others."""
    if max_samples < 0:
        raise ConfigError(f"report: --max-samples must be 0 or more, got {max_samples}")
    inputs = recognise(paths)
    out_dir = Path(out_dir)
    _prepare(out_dir, [*inputs.audits, *inputs.compares, *inputs.runs])
    audits = [read_audit(folder, out_dir, max_samples=max_samples) for folder in inputs.audits]
    compares = [read_compare(folder, out_dir, i) for i, folder in enumerate(inputs.compares, 1)]
    runs = [read_run(folder, out_dir, i) for i, folder in enumerate(inputs.runs, 1)]
    commands, command_notes = _commands([*audits, *compares, *runs], out_dir, command)
    html = page.render(
        title=title, created=time.strftime("%Y-%m-%d %H:%M %z"), version=__version__,
        inputs=[str(p) for p in paths], notes=inputs.notes, audits=audits, compares=compares, runs=runs,
        commands=commands, command_notes=command_notes,
    )
    path = write_text_atomic(out_dir / REPORT_FILE, html)
    return ReportResult(path, out_dir, audits, compares, runs, inputs.notes)


def _prepare(out_dir: Path, inputs: list[Path]) -> None:
    """OUT new, empty or an earlier report (see the module docstring); never one of the input folders."""
    resolved = out_dir.resolve()
    for folder in inputs:
        if resolved == folder.resolve():
            raise ConfigError(f"report: --out {out_dir} is one of the input folders; give a folder of its own")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"report: --out {out_dir} is a file; give a new folder, an empty one or an earlier report")
    if out_dir.is_dir():
        entries = [p for p in out_dir.iterdir() if p.name != COMMANDS_FILE]
        if entries and not (out_dir / REPORT_FILE).is_file():
            raise ConfigError(f"report: --out {out_dir} holds other files and no {REPORT_FILE}; give a new folder, "
                              "an empty one or an earlier report")
        for pattern in OWN_FILES:
            for stale in out_dir.glob(pattern):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _commands(sections: list, out_dir: Path, command: list[str] | None) -> tuple[list[dict], list[str]]:
    """Every recorded command of the input folders and of OUT (earlier reports), once each, oldest first, and
    this report's own; notes name the folders with none recorded."""
    seen, rows, notes = set(), [], []
    for folder in [s.folder for s in sections] + [out_dir]:
        records = read_commands(folder)
        if not records and folder != out_dir:
            notes.append(f"No command is recorded in {folder} (made by a Caspi before commands were recorded, or "
                         "through the library).")
        for r in records:
            key = (tuple(map(str, r["argv"])), r.get("cwd"), r.get("started_at"))
            if key not in seen:
                seen.add(key)
                rows.append(_row(r))
    rows.sort(key=lambda r: r["started_at"] or "")
    if command is not None:
        rows.append({**_row({"argv": ["caspi", *command], "cwd": os.getcwd(),
                             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}), "status": "this report"})
    return rows, notes


def _row(record: dict) -> dict:
    code = record.get("exit_code")
    status = f"exit {code}" + (f" ({EXIT_MEANINGS[code]})" if code in EXIT_MEANINGS else "")
    return {"line": shell_line(record), "cwd": record.get("cwd", "?"), "started_at": record.get("started_at", ""),
            "status": status, "seconds": record.get("seconds")}
