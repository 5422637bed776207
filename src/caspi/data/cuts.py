"""The one shape of a Caspi manifest entry, and reading/writing manifests.

A manifest is a Lhotse `CutSet` saved as `.jsonl.gz`. Every cut is a `MonoCut` over a whole 16 kHz mono audio
file with one supervision that holds the transcript; the sample's domain lives in `cut.custom["domain"]`.
Everything that builds or reads cuts goes through these helpers, so the layout is defined once.
"""

from __future__ import annotations

from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

from caspi.data.audio import SAMPLE_RATE
from caspi.errors import DataError

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
    """Write a manifest atomically (temp file + rename), so a crash never leaves half a manifest behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix (.jsonl.gz) at the end so lhotse picks the compressed writer.
    tmp = path.with_name(f".tmp-{path.name}")
    cuts.to_file(tmp)
    tmp.replace(path)
    return path
