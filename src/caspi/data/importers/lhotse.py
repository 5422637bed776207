"""Lhotse CutSet manifests: validated and re-written like any other source, keeping other `custom` fields.

A cut that is a whole file (one file source, no transforms, start 0, the file's duration) is referenced by path
(relative paths resolve against the manifest's folder); any other cut (part of a file, several sources, a non-file
source) travels as its dict, and `caspi.data.ingest` lets Lhotse load its samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from caspi.data.cuts import cut_domain, cut_text, read_manifest
from caspi.data.importers.common import Job, resolve_path


def from_lhotse(path: Path, domain: str | None):
    cuts = read_manifest(path)
    base = path.parent

    def jobs() -> Iterator[Job]:
        for i, cut in enumerate(cuts):
            custom = {k: v for k, v in (cut.custom or {}).items() if k != "domain"} or None
            job = Job(
                id=cut.id,
                source=f"{path}:{i + 1}",
                text=cut_text(cut),
                domain=domain or cut_domain(cut),
                custom=custom,
            )
            rec = getattr(cut, "recording", None)
            if rec is None:
                job.reject = ("missing_field", "cut has no recording")
            elif _is_whole_file(cut):
                job.audio = str(resolve_path(rec.sources[0].source, base))
            else:
                # A cut over part of a file, several channels or a non-file source: let Lhotse load its samples.
                job.audio = cut.to_dict()
            yield job

    return "lhotse", len(cuts), jobs()


def _is_whole_file(cut) -> bool:
    rec = cut.recording
    return (
        len(rec.sources) == 1
        and rec.sources[0].type == "file"
        and not rec.transforms
        and cut.start == 0
        and abs(cut.duration - rec.duration) < 1e-3
    )
