"""What the importers share: the `Job` each sample travels as, and the helpers two or more source kinds need
(reading a JSONL file's first record, finding the transcript column, resolving relative audio paths, deriving an id
from a file path). It imports no importer and nothing from `caspi.data.ingest`, so there is no cycle."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

from caspi.errors import ConfigError, DataError

TEXT_FIELDS = ("text", "sentence", "transcription", "transcript")  # tried in order when text_field is None


@dataclass
class Job:
    """One sample on its way through validation. `audio` is a path, encoded bytes, or a Lhotse cut dict."""

    id: str | None
    source: str  # where the sample came from, e.g. `manifest.jsonl:12`, for messages and rejected.jsonl
    text: str | None = None
    domain: str | None = None
    audio: str | bytes | dict | None = None
    declared_duration: float | None = None  # seconds, from a NeMo manifest
    custom: dict | None = None  # extra cut fields to keep (Lhotse source)
    reject: tuple[str, str] | None = None  # (reason, message) when rejected before decoding
    out_path: str | None = None  # where a FLAC is written if the file cannot be referenced in place


def first_record(path: Path) -> dict:
    """The first JSON object of a (possibly gzipped) JSONL file; `ConfigError` if it has none."""
    with open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}: first line is not JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise ConfigError(f"{path}: first line is not a JSON object")
                return record
    raise ConfigError(f"{path}: file is empty")


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def resolve_text_field(text_field: str | None, columns: list[str], label: str) -> str:
    """`text_field` when given and present, else the first of `TEXT_FIELDS` present; `DataError` naming the columns."""
    if text_field is not None:
        if text_field not in columns:
            raise DataError(f"{label}: no text column {text_field!r}; columns available: {columns}")
        return text_field
    for candidate in TEXT_FIELDS:
        if candidate in columns:
            return candidate
    raise DataError(
        f"{label}: no transcript column (looked for {', '.join(TEXT_FIELDS)}); columns available: {columns}; "
        "name it with text_field"
    )


def resolve_path(value: str, base_dir: Path | None) -> Path:
    """A relative audio path resolves against the source's folder first, then the working directory."""
    path = Path(value)
    if path.is_absolute() or base_dir is None:
        return path
    beside = base_dir / path
    if not beside.exists() and path.exists():
        return path.resolve()
    return beside  # also when neither exists, so the error names where the file was expected


def derive_id(audio_path: Path, base: Path) -> str:
    """A stable id from a file path: relative to `base` when inside it, no extension, `/` → `-`, spaces → `_`."""
    try:
        rel = audio_path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(*audio_path.resolve().parts[1:])
    return re.sub(r"\s+", "_", "-".join(rel.with_suffix("").parts))
