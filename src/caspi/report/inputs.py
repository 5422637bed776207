"""Which folder is what: the report takes folders and recognises each by the files it holds.

    audit     alignment_report.json                 (`caspi audit --out`)
    compare   comparison.json                       (`caspi compare --out`)
    run       run.json or metrics.jsonl             (`caspi train --out`)

A folder that is none of these but holds some directly (a project folder such as `runs/`) stands for them, in name
order; its other sub-folders are passed over. An eval folder (summary.json) is refused with what to pass instead,
and anything else with the list above: a report silently missing a section is worse than an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from caspi.errors import ConfigError, DataError

AUDIT, COMPARE, RUN, EVAL = "audit", "compare", "run", "eval"
MARKERS = {  # the kind, the files that make a folder that kind (any of them), in the order they are tried
    AUDIT: ("alignment_report.json",),
    COMPARE: ("comparison.json",),
    RUN: ("run.json", "metrics.jsonl"),
    EVAL: ("summary.json", "predictions.jsonl"),
}
WHAT = ("an audit folder (alignment_report.json, from `caspi audit`), a compare folder (comparison.json, from "
        "`caspi compare`) or a run folder (run.json / metrics.jsonl, from `caspi train`)")


@dataclass
class Inputs:
    audits: list[Path] = field(default_factory=list)
    compares: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was expanded, what was passed over

    def add(self, kind: str, folder: Path) -> None:
        target = {AUDIT: self.audits, COMPARE: self.compares, RUN: self.runs}[kind]
        if folder not in target:
            target.append(folder)

    @property
    def empty(self) -> bool:
        return not (self.audits or self.compares or self.runs)


def kind_of(folder: Path) -> str | None:
    """The kind of a folder by the files it holds (see the module docstring), or None."""
    for kind, names in MARKERS.items():
        if any((folder / name).is_file() for name in names):
            return kind
    return None


def recognise(paths: list[str | Path]) -> Inputs:
    """Sort `paths` into audit, compare and run folders; ConfigError naming the first that is none of them."""
    if not paths:
        raise ConfigError(f"report: give at least one folder: {WHAT}")
    found = Inputs()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"report: {path} does not exist; give {WHAT}")
        if not path.is_dir():
            raise ConfigError(f"report: {path} is a file; give its folder, {WHAT}")
        kind = kind_of(path)
        if kind == EVAL:
            raise ConfigError(f"report: {path} is an eval folder (summary.json); compare two of them with "
                              "`caspi compare A B --out DIR` and pass DIR")
        if kind is not None:
            found.add(kind, path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir())
        kinds = [(child, kind_of(child)) for child in children]
        taken = [(child, k) for child, k in kinds if k in (AUDIT, COMPARE, RUN)]
        if not taken:
            raise ConfigError(f"report: {path} is not {WHAT}, and none of its sub-folders is one (it holds "
                              f"{_listing(path)})")
        for child, k in taken:
            found.add(k, child)
        skipped = [child.name for child, k in kinds if k not in (AUDIT, COMPARE, RUN)]
        found.notes.append(f"{path}: took {', '.join(f'{c.name} ({k})' for c, k in taken)}"
                           + (f"; passed over {', '.join(skipped)}" if skipped else ""))
    return found


def _listing(folder: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "nothing"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_json(path: Path) -> dict:
    """A JSON object file of an input folder; a DataError names the file when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data
