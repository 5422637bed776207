"""NeMo-style JSONL manifests: one JSON object per line with `audio_filepath` (relative paths resolve against the
manifest's folder first), `text` (or another transcript field), and optionally `duration`, `domain` and `id`.

A line that is not a JSON object, or lacks the audio or transcript field, becomes a rejected job (`bad_record`,
`missing_field`) rather than an error, so one bad line does not stop an import. A missing `id` is derived from
the audio path. The declared `duration` travels with the job: `caspi.data.ingest` compares it with the decoded
length and records a warning when they disagree by more than 0.1 s (the decoded duration is used; whether the
transcript matches the audio is the audit's job).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from caspi.data.importers.common import Job, derive_id, first_record, open_text, resolve_path, resolve_text_field


def from_nemo(path: Path, *, domain, text_field, audio_field, id_field):
    audio_field = audio_field or "audio_filepath"
    id_field = id_field or "id"
    first = first_record(path)
    text_field = resolve_text_field(text_field, sorted(first), str(path))
    base = path.parent
    name = base.resolve().name

    with open_text(path) as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]

    def jobs() -> Iterator[Job]:
        for lineno, line in lines:
            job = Job(id=None, source=f"{path}:{lineno}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                job.reject = ("bad_record", f"line is not JSON ({exc})")
                yield job
                continue
            if not isinstance(record, dict):
                job.reject = ("bad_record", "line is not a JSON object")
                yield job
                continue
            audio = record.get(audio_field)
            audio_path = resolve_path(str(audio), base) if audio else None
            if record.get(id_field) not in (None, ""):
                job.id = str(record[id_field])
            elif audio_path is not None:
                job.id = derive_id(audio_path, base)
            job.text = record.get(text_field)
            job.domain = domain or str(record.get("domain") or name)
            if audio_path is None:
                job.reject = ("missing_field", f"no {audio_field!r} field; fields: {sorted(record)}")
            elif text_field not in record:
                job.reject = ("missing_field", f"no {text_field!r} field; fields: {sorted(record)}")
            else:
                job.audio = str(audio_path)
                if isinstance(record.get("duration"), (int, float)):
                    job.declared_duration = float(record["duration"])
            yield job

    return "nemo", len(lines), jobs()
