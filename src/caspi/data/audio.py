"""Audio I/O: soundfile (libsndfile) to decode, soxr to resample. Everything in Caspi is 16 kHz mono float32.

torchaudio is not used: it has no CPU build here and is moving its I/O to torchcodec (DESIGN.md).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from caspi.errors import AudioError

SAMPLE_RATE = 16_000  # Hz; the rate every model family in Caspi consumes


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal (T,) with soxr's high-quality mode."""
    if orig_sr == target_sr:
        return samples
    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def decode_audio(
    source: str | Path | bytes, name: str | None = None, target_sr: int = SAMPLE_RATE
) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes (wav, flac, ogg, mp3) to mono float32 at `target_sr`.

    Returns `(samples (T,), original_sample_rate)`. Stereo is averaged to mono. Raises `AudioError` naming the
    file (or `name` for in-memory bytes) with a reason tag: `unreadable`, `empty` or `non_finite`.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        data, sr = sf.read(handle, dtype="float32", always_2d=True)  # (T, C)
    except FileNotFoundError:
        raise AudioError(f"{label}: audio file not found", reason="unreadable") from None
    except Exception as exc:  # libsndfile raises LibsndfileError/RuntimeError/TypeError depending on the damage
        raise AudioError(f"{label}: cannot decode audio ({exc})", reason="unreadable") from None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (T,)
    check_samples(mono, label)
    return resample(np.ascontiguousarray(mono), int(sr), target_sr), int(sr)


def check_samples(mono: np.ndarray, label: str) -> None:
    """Raise `AudioError` (reason `empty` or `non_finite`) for a decoded mono signal (T,) that is unusable."""
    if mono.size == 0:
        raise AudioError(f"{label}: audio has zero length", reason="empty")
    finite = np.isfinite(mono)
    if not finite.any():
        raise AudioError(f"{label}: audio is all NaN/inf", reason="non_finite")
    if not finite.all():
        raise AudioError(f"{label}: audio contains NaN/inf samples", reason="non_finite")


def write_flac(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float32 signal as 16-bit FLAC (lossless, ~half the size of WAV)."""
    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
