"""The audit's `vad` scorer's numbers: silero-vad speech segments per clip, summed into what the audit caches.

    vad_measures(clips)  -> per clip, the raw numbers the audit caches (speech seconds, coverage, ...)

The batched model calls and silero's segment rules live in `caspi.data.vad` (long-form decoding reads them too).
Flags (no speech, text longer than the speech) are decided from these numbers in `caspi.audit.scorers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caspi.data.audio import SAMPLE_RATE
from caspi.data.vad import as_mono, speech_probabilities, speech_segments
from caspi.errors import ConfigError


def vad_measures(
    clips: Sequence[np.ndarray],
    sample_rate: int = SAMPLE_RATE,
    *,
    model=None,
    batch_size: int = 64,
    num_threads: int | None = 1,
    threshold: float = 0.5,
    neg_threshold: float | None = None,
    min_speech_ms: float = 250,
    min_silence_ms: float = 100,
    speech_pad_ms: float = 30,
) -> list[dict]:
    """Per clip, the speech-activity numbers the audit caches (flags are decided elsewhere, from these):

        speech_s         seconds inside speech segments (padding included, as silero reports them)
        duration_s       the clip's length in seconds
        speech_coverage  speech_s / duration_s (0.0 for an empty clip)
        max_speech_prob  the highest window probability (0.0 for an empty clip): silence and noise stay far
                         below the threshold, while speech that is too short or faint for a segment still peaks
        first_speech_s   start of the first segment, None when there is no speech
        last_speech_s    end of the last segment, None when there is no speech
        segments         number of segments

    `clips` are mono float arrays, (T,) or (1, T), at 16 kHz (the only rate supported). The segment parameters
    are `speech_segments`'s; `model`, `batch_size` and `num_threads` are `speech_probabilities`'s.
    """
    if sample_rate != SAMPLE_RATE:
        raise ConfigError(f"vad_measures: audio must be {SAMPLE_RATE} Hz (resample first), got {sample_rate} Hz")
    audio = [as_mono(c, i) for i, c in enumerate(clips)]
    probs = speech_probabilities(audio, model=model, batch_size=batch_size, num_threads=num_threads)
    measures = []
    for x, p in zip(audio, probs):
        segments = speech_segments(
            p,
            threshold=threshold,
            neg_threshold=neg_threshold,
            min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms,
            speech_pad_ms=speech_pad_ms,
            num_samples=len(x),
        )
        duration = len(x) / sample_rate  # seconds
        speech = float(sum(end - start for start, end in segments))  # seconds
        measures.append(
            {
                "speech_s": speech,
                "duration_s": duration,
                "speech_coverage": speech / duration if duration > 0 else 0.0,
                "first_speech_s": segments[0][0] if segments else None,
                "last_speech_s": segments[-1][1] if segments else None,
                "segments": len(segments),
                "max_speech_prob": float(p.max()) if len(p) else 0.0,
            }
        )
    return measures
