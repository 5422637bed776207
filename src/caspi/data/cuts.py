"""The one shape of a Caspi manifest entry, and reading/writing manifests.

A manifest is a Lhotse `CutSet` saved as `.jsonl.gz`. Every cut is a `MonoCut` over a whole 16 kHz mono audio
file with one supervision that holds the transcript; the sample's domain lives in `cut.custom["domain"]`.
Everything that builds or reads cuts goes through these helpers, so the layout is defined once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

import numpy as np

from caspi.data.audio import SAMPLE_RATE, check_samples
from caspi.errors import AudioError, DataError
from caspi.folders import fsync_dir

DEFAULT_DOMAIN = "default"
LANGUAGE = "he"


def make_cut(
    cut_id: str,
    audio_path: str | Path,
    num_samples: int,
    text: str,
    domain: str = DEFAULT_DOMAIN,
    sampling_rate: int = SAMPLE_RATE,
    custom: dict | None = None,
) -> MonoCut:
    """A cut covering the whole file `audio_path` (already mono) with transcript `text`."""
    duration = num_samples / sampling_rate  # seconds
    recording = Recording(
        id=cut_id,
        sources=[AudioSource(type="file", channels=[0], source=str(audio_path))],
        sampling_rate=sampling_rate,
        num_samples=num_samples,
        duration=duration,
    )
    supervision = SupervisionSegment(
        id=cut_id, recording_id=cut_id, start=0.0, duration=duration, channel=0, text=text, language=LANGUAGE
    )
    return MonoCut(
        id=cut_id,
        start=0.0,
        duration=duration,
        channel=0,
        supervisions=[supervision],
        recording=recording,
        custom={"domain": domain, **(custom or {})},
    )


def cut_text(cut) -> str:
    """The transcript of a Caspi cut (its supervisions joined; a speed-perturbed cut keeps them)."""
    return " ".join(s.text for s in cut.supervisions if s.text).strip()


def cut_domain(cut) -> str:
    """The domain of a Caspi cut, `default` when none was given."""
    custom = getattr(cut, "custom", None) or {}
    return str(custom.get("domain", DEFAULT_DOMAIN))


def load_cut_audio(cut, label: str | None = None) -> np.ndarray:
    """A cut's audio as 16 kHz mono float32 (T,): resampled when needed, channels averaged. Any decoding failure,
    an empty clip or NaN/inf samples is an `AudioError` naming `label` (default: the cut id)."""
    label = label or f"cut {cut.id}"
    try:
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        samples = cut.load_audio()  # (C, T)
    except Exception as exc:  # noqa: BLE001 - Lhotse, libsndfile and audioread raise many types
        raise AudioError(f"{label}: cannot load audio from {_audio_path(cut)} ({_short_reason(exc)})") from None
    mono = samples.mean(axis=0).astype(np.float32)  # (T,)
    check_samples(mono, label)
    return mono


def _audio_path(cut) -> str:
    recording = getattr(cut, "recording", None)
    if recording is None or not recording.sources:
        return "<no recording>"
    return str(recording.sources[0].source)


def _short_reason(exc: Exception) -> str:
    """One line from a (possibly multi-line) Lhotse loading error, naming the underlying failure: Lhotse's message
    lists every backend it tried and dumps the whole cut."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith("Exception #0")), lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail}"[:300]


def read_manifest(path: str | Path) -> CutSet:
    """Load a manifest eagerly; a missing or unparsable file is a `DataError` that names it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        cuts = CutSet.from_file(path).to_eager()
    except Exception as exc:  # lhotse raises many types for malformed JSON/fields
        raise DataError(f"{path}: not a readable Lhotse CutSet manifest ({type(exc).__name__}: {exc})") from None
    return cuts


def write_manifest(cuts: CutSet, path: str | Path) -> Path:
    """Write a manifest (`.jsonl.gz` or `.jsonl`) atomically: temp file, fsync, rename.

    Written here rather than with `CutSet.to_file` so the bytes are deterministic: Lhotse's gzip writer stamps the
    current time into the header, and the Phase 0 gate compares manifests by sha256 (same cuts → same hash).
    Lines are Lhotse's own `cut.to_dict()` records, so `CutSet.from_file` reads them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as raw:
        sink = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw
        for cut in cuts:
            sink.write((json.dumps(cut.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
        if sink is not raw:
            sink.close()
        raw.flush()
        os.fsync(raw.fileno())
    tmp.replace(path)
    return path


def write_atomic(path: str | Path, write) -> Path:
    """Replace `path` atomically: `write(tmp)` fills a temp sibling `.tmp-<name>` (the suffix stays, so matplotlib
    and csv writers see the real format), which is fsynced and renamed over `path`, and the folder fsynced. A reader
    sees the old file or the new one, whole; a kill leaves at most the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the file
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) as the new content of `path`, atomically (`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_jsonl(records, path: str | Path) -> Path:
    """Write dicts as JSON lines (UTF-8, Hebrew kept readable) atomically (`write_atomic`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)

    return write_atomic(path, write)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed (manifests are compared by content, not by name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
