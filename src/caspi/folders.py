"""Folders Caspi writes whole (a conversion, an export, a checkpoint): whether an output folder may be replaced,
and fsync of what was written before the rename that puts it in place.

It imports only `caspi.errors`, so model conversion (`caspi.models.convert`), the data layer's atomic file writes
(`caspi.data.cuts`) and training's checkpoints and exports (`caspi.train`) share one copy of each rule.
"""

from __future__ import annotations

import os
from pathlib import Path

from caspi.errors import CaspiError, ConfigError


def check_output_folder(out: Path, *, marker: str, what: str, error: type[CaspiError] = ConfigError) -> None:
    """`error` unless `out` may receive a `what` ("conversion", "export"): new, an empty folder, or an earlier one,
    which holds the file `marker`. Any other folder is refused, so a wrong --out cannot wipe a folder of other
    files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise error(f"{out}: exists and is a file; the {what} needs a new or empty folder, or an earlier {what}")
    entries = sorted(p.name for p in out.iterdir())
    if entries and marker not in entries:
        raise error(
            f"{out}: the folder holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} (e.g. "
            f"{', '.join(entries[:3])}) and is not an earlier Caspi {what} (no {marker}); refusing to replace it. "
            f"Write the {what} into a new or empty folder"
        )


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then the folders themselves (before renaming it into place)."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)
