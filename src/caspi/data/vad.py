"""Speech activity with silero-vad, run batched across clips: the probabilities and segments that the audit's `vad`
scorer (`caspi.audit.vad`) and long-form decoding (`caspi.longform`, which cuts long recordings at silences) both
read.

silero-vad is a streaming model: it reads 512-sample windows (32 ms at 16 kHz), each prefixed by the last 64 samples
of the previous one (its "context"), and carries an LSTM state from window to window. Its `get_speech_timestamps`
feeds one clip at a time, one window per call, and a call is mostly fixed cost: on one thread ~0.2 ms for one
window, ~1.6 ms for 64. Here many clips advance window by window in lockstep, one (B, 512) call per window step;
the JIT model keeps a context and a state per row, and rows never mix, so each clip gets the probabilities it would
get alone.

    speech_probabilities(clips)  -> per clip, the per-window speech probability (n_windows,)
    speech_segments(probs)       -> [(start_s, end_s)], silero's hysteresis and padding rules on those probabilities

Threads: importing `silero_vad` calls `torch.set_num_threads(1)` for the whole process (silero_vad/model.py);
`load_vad_model` puts the caller's thread count back. `speech_probabilities` runs the model on one thread by default
and restores the caller's count when it returns: each call is a few small convolutions and an LSTM cell. On the
2-core machine two threads were 1.2-1.4x faster when it was nearly idle, but 3-100x slower with other work running
(benchmarks/RESULTS.md); one thread is the predictable choice.

Part of `caspi.data` (layer 1) so that both users, one layer apart, import it downwards; it imports only
`caspi.errors` and the audio rate of `caspi.data.audio`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from caspi.data.audio import SAMPLE_RATE  # 16 kHz: silero's 16 kHz model (its 8 kHz branch is not used)
from caspi.errors import ConfigError, DataError

WINDOW = 512  # samples per model call at 16 kHz (32 ms); the model rejects any other size
WINDOW_S = WINDOW / SAMPLE_RATE  # seconds per probability
BLOCK_STEPS = 512  # windows (16.4 s) of a batch's padded audio built at a time: (B, 512 * 512) float32, B MiB


@lru_cache(maxsize=1)
def load_vad_model():
    """silero-vad's JIT model (weights ship in the pip package), loaded once per process.

    The JIT model is used rather than the ONNX one: onnxruntime is not a Caspi dependency, and the JIT model
    already takes a batch dimension. The model object is stateful (context and LSTM state between calls), so one
    instance must not be used from two threads at once.
    """
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad  # its import sets torch's thread count to 1, process-wide
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        # silero's loader uses importlib.resources.path and torch.jit.load, both deprecated; harmless here.
        warnings.simplefilter("ignore", DeprecationWarning)
        model = load_silero_vad(onnx=False)
    return model


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to `num_threads` (None: unchanged), then restore it.
    The setting is process-wide while the block runs."""
    before = torch.get_num_threads()
    if num_threads is not None and num_threads != before:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def as_mono(clip, index: int) -> np.ndarray:
    """A clip as contiguous float32 (T,); a leading channel axis of size 1 ((1, T), as `cut.load_audio()`) is
    dropped."""
    x = np.asarray(clip, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise DataError(f"clip {index}: expected mono audio of shape (T,) or (1, T), got shape {x.shape}")
    return np.ascontiguousarray(x)


def num_windows(num_samples: int) -> int:
    """How many 512-sample windows silero reads for a clip of `num_samples` (the last one zero-padded)."""
    return math.ceil(num_samples / WINDOW)


@torch.no_grad()
def speech_probabilities(
    clips: Sequence[np.ndarray], model=None, batch_size: int = 64, num_threads: int | None = 1
) -> list[np.ndarray]:
    """Per clip, silero's speech probability of each 32 ms window: float32 (ceil(T / 512),), 16 kHz input.

    The same numbers as resetting the model and calling it window by window on each clip alone (the last window
    zero-padded, as `get_speech_timestamps` does), but computed for `batch_size` clips per call: clips are sorted
    by length, each batch is zero-padded to its longest clip (`BLOCK_STEPS` windows at a time, so memory beyond
    the clips stays bounded), and every window step is one (B, 512) call. A clip's
    padded tail comes after its own windows and rows never mix, so it changes nothing; each clip's probabilities
    are cut to its own window count. An empty clip gets an empty array.

    Batched and single-clip results differ only by float32 rounding (≤ 2e-5 measured: the batched kernels sum in
    another order). `model` defaults to `load_vad_model()`; `num_threads` is torch's thread count during the calls
    (None: leave it as it is), restored afterwards.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"speech_probabilities: batch_size must be an integer >= 1, got {batch_size!r}")
    model = load_vad_model() if model is None else model
    audio = [as_mono(c, i) for i, c in enumerate(clips)]
    counts = [num_windows(len(x)) for x in audio]
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float32) for _ in audio]
    # Longest first, so each batch holds clips of similar length and little of it is padding.
    order = [i for i in sorted(range(len(audio)), key=lambda i: -counts[i]) if counts[i] > 0]
    with _torch_threads(num_threads):
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            steps = counts[rows[0]]  # the batch's longest clip, in windows
            probs = np.empty((len(rows), steps), dtype=np.float32)  # (B, steps)
            model.reset_states()  # zero context and state, sized for this batch on the first call
            # The padded batch is built BLOCK_STEPS windows at a time: a 20-minute recording is not copied whole.
            for s0 in range(0, steps, BLOCK_STEPS):
                s1 = min(steps, s0 + BLOCK_STEPS)
                block = np.zeros((len(rows), (s1 - s0) * WINDOW), dtype=np.float32)  # (B, block windows * 512)
                for r, i in enumerate(rows):
                    part = audio[i][s0 * WINDOW : s1 * WINDOW]
                    block[r, : len(part)] = part
                x = torch.from_numpy(block)
                for s in range(s1 - s0):
                    probs[:, s0 + s] = model(x[:, s * WINDOW : (s + 1) * WINDOW], SAMPLE_RATE)[:, 0].numpy()
            for r, i in enumerate(rows):
                out[i] = probs[r, : counts[i]].copy()
    return out


def speech_segments(
    probs: np.ndarray,
    threshold: float = 0.5,
    neg_threshold: float | None = None,
    min_speech_ms: float = 250,
    min_silence_ms: float = 100,
    speech_pad_ms: float = 30,
    num_samples: int | None = None,
) -> list[tuple[float, float]]:
    """Speech segments [(start_s, end_s)] from per-window probabilities, by silero's `get_speech_timestamps` rules.

    Mirrors silero-vad 6.2's `get_speech_timestamps_from_probs` with `max_speech_duration_s=inf` (segments are
    never split: audit clips are short, and long-form chunking wants the real silences, placing its own cap).
    Parameters, with silero's names:
        threshold       a window at or above it starts (or continues) speech
        neg_threshold   while in speech, a window below it starts a candidate silence (default threshold - 0.15,
                        at least 0.01); windows between the two thresholds change nothing
        min_speech_ms   (min_speech_duration_ms) segments this short or shorter are dropped
        min_silence_ms  (min_silence_duration_ms) a silence closes the segment once it lasts this long
        speech_pad_ms   segments are widened by this much each side; when the gap between two segments is under
                        twice the pad, each takes half of it
        num_samples     the clip's length in samples (default: len(probs) * 512); a segment still open at the end
                        closes there, and no segment ends past it
    Times are in seconds, exact multiples of 1/16000 s (silero's `return_seconds` rounds to 0.1 s by default).
    """
    sr = SAMPLE_RATE
    length = len(probs) * WINDOW if num_samples is None else int(num_samples)  # samples
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    min_speech = sr * min_speech_ms / 1000  # samples
    min_silence = sr * min_silence_ms / 1000  # samples
    pad = sr * speech_pad_ms / 1000  # samples

    speeches: list[list[int]] = []  # [start, end] in samples
    triggered = False
    start = 0
    temp_end = 0  # start of the current candidate silence; 0 = none (a silence never starts at sample 0)
    for i, p in enumerate(np.asarray(probs, dtype=np.float64).tolist()):
        cur = WINDOW * i
        if p >= threshold and temp_end:
            temp_end = 0  # speech came back before the silence was long enough
        if p >= threshold and not triggered:
            triggered, start = True, cur
            continue
        if p < neg_threshold and triggered:
            if not temp_end:
                temp_end = cur
            if cur - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                speeches.append([start, temp_end])
            triggered, temp_end = False, 0
    if triggered and length - start > min_speech:
        speeches.append([start, length])

    # Padding, exactly as silero: the first segment's start, each gap shared or padded, the last segment's end.
    for k, speech in enumerate(speeches):
        if k == 0:
            speech[0] = int(max(0, speech[0] - pad))
        if k != len(speeches) - 1:
            nxt = speeches[k + 1]
            gap = nxt[0] - speech[1]  # samples
            if gap < 2 * pad:
                speech[1] += int(gap // 2)
                nxt[0] = int(max(0, nxt[0] - gap // 2))
            else:
                speech[1] = int(min(length, speech[1] + pad))
                nxt[0] = int(max(0, nxt[0] - pad))
        else:
            speech[1] = int(min(length, speech[1] + pad))
    return [(s / sr, e / sr) for s, e in speeches]

