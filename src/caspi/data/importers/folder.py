"""A folder of audio files (searched recursively), each with its transcript in a same-named `.txt` file beside it.

Ids are derived from the path relative to the folder (`spk1/take one.wav` → `spk1-take_one`); the domain is the
folder's name unless given. An audio file without a transcript is rejected (`missing_transcript`), one whose
transcript is not UTF-8 too (`unreadable`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from caspi.data.importers.common import Job, derive_id

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def from_folder(root: Path, files: list[Path], domain: str | None):
    name = root.resolve().name

    def jobs() -> Iterator[Job]:
        for audio in files:
            job = Job(id=derive_id(audio, root), source=str(audio), domain=domain or name, audio=str(audio))
            transcript = audio.with_suffix(".txt")
            if not transcript.is_file():
                job.reject = ("missing_transcript", f"no transcript file {transcript.name} beside the audio")
            else:
                try:  # utf-8-sig drops a byte-order mark that some editors add
                    job.text = transcript.read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError) as exc:
                    job.reject = ("unreadable", f"cannot read transcript {transcript.name} as UTF-8 ({exc})")
            yield job

    return "folder", len(files), jobs()
