"""The command lines that produced a folder: `caspi` records each command it runs in the command's output folder
(`OUT/commands.jsonl`, one JSON object per line, appended), and the report lists them.

    {"argv": ["caspi", "train", "--recipe", "r.yaml", "--out", "runs/r2"], "cwd": "/home/me/asr",
     "exit_code": 143, "started_at": "2026-11-26T01:02:03+0000", "seconds": 61.2, "caspi": "0.1.0"}

The CLI writes the line after the command returns (an exit code it chose: 0, 3 for STOP, 143 for a preempted
training run), never for one that failed with an error, so the file lists what produced the folder's contents.
`cwd` is kept because relative paths in argv (and in the reports, e.g. the audited manifest) are relative to it.
Standard library only: the CLI imports this module for every command.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from caspi import __version__

COMMANDS_FILE = "commands.jsonl"


def record_command(out_dir: str | Path, argv: list[str], exit_code: int, started: float) -> Path:
    """Append one command (`argv` without the program name; `started`: its `time.time()`) to OUT/commands.jsonl.
    The folder is created if the command did not (a command that wrote nothing still ran)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"argv": ["caspi", *argv], "cwd": os.getcwd(), "exit_code": exit_code,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
              "seconds": round(time.time() - started, 3), "caspi": __version__}
    path = out_dir / COMMANDS_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_commands(folder: str | Path) -> list[dict]:
    """The commands recorded in `folder` (oldest first); a torn or foreign line is skipped, a missing file is []."""
    path = Path(folder) / COMMANDS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if isinstance(record, dict) and isinstance(record.get("argv"), list):
            out.append(record)
    return out


def shell_line(record: dict) -> str:
    """The recorded command as one line a shell runs again (each word quoted as needed)."""
    return shlex.join(str(word) for word in record["argv"])
