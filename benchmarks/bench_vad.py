"""Speech activity for the audit's `vad` scorer: batched `caspi.audit.vad.vad_measures` against silero-vad's own
`get_speech_timestamps` run clip by clip, on the same clips, in the same run.

Clips: 2,500 synthesised Hebrew clips (`caspi.data.synth.synthesize`, espeak-ng, four domains, 16 kHz FLAC), or
any Caspi manifest with `--manifest`. Steps, each timed on its own:

- synthesis (setup, not part of an audit);
- decode: `cut.load_audio()` of every clip (soundfile via Lhotse), what an audit with audio pays first;
- rate: characters per second from the manifest (the cheap metadata check the audit runs with the vad scorer);
- batched: `vad_measures` on every clip (`--batch-size` clips per model call, sorted by length);
- clip by clip: `get_speech_timestamps` on `--baseline-clips` clips, an even spread of the length-sorted set (so
  their duration distribution matches), extrapolated to every clip by audio seconds.

Both VAD runs use `--threads` torch threads (silero's own default is 1). The audit's budget is 3 minutes for
2,500 clips of ~3 s mean (1-15 s) on 2 CPU cores, decoding included; espeak-ng clips are shorter (~2.1 s mean,
1-4 s), so the verdict scales the measured time by audio seconds to 2,500 × 3 s. The baseline's segments are
also compared with the batched ones (same number of segments, boundaries within one 32 ms window).

    .venv/bin/python benchmarks/bench_vad.py [--clips 2500] [--manifest PATH | --out DIR] [--baseline-clips 200]
                                             [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from caspi.audit.vad import vad_measures
from caspi.data.audio import SAMPLE_RATE
from caspi.data.cuts import cut_text, read_manifest
from caspi.data.vad import WINDOW, WINDOW_S, load_vad_model, num_windows, speech_probabilities, speech_segments
from caspi.testing import torch_threads

BUDGET_S = 180.0  # seconds for 2,500 clips: VAD + rate check + decoding, on 2 cores
BUDGET_CLIPS = 2500
BUDGET_MEAN_S = 3.0  # seconds, the audited clips' mean duration (1-15 s each)


def corpus(args, tmp: Path):
    """The cuts to score: `--manifest`, or `--clips` freshly synthesised ones (and the seconds that took)."""
    if args.manifest:
        return list(read_manifest(args.manifest)), 0.0
    from caspi.data.synth import synthesize

    start = time.perf_counter()
    summary = synthesize(args.out or tmp / "synth", n_train=args.clips, n_eval=0, seed=0, workers=2, progress=False)
    return list(read_manifest(summary.train_manifest)), time.perf_counter() - start


def clip_by_clip(clips: list[np.ndarray], model, threads: int) -> tuple[float, list[list[tuple[float, float]]]]:
    """Seconds for silero's `get_speech_timestamps` on each clip alone, and its segments (seconds, unrounded)."""
    from silero_vad import get_speech_timestamps  # already imported by load_vad_model: no thread-count reset

    with torch_threads(threads):
        start = time.perf_counter()
        found = [get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=SAMPLE_RATE) for x in clips]
        seconds = time.perf_counter() - start
    return seconds, [[(d["start"] / SAMPLE_RATE, d["end"] / SAMPLE_RATE) for d in segs] for segs in found]


def agreement(ours: list[list[tuple[float, float]]], theirs: list[list[tuple[float, float]]]) -> tuple[int, float]:
    """(clips whose segments match within one window, largest boundary difference in seconds among those)."""
    same, worst = 0, 0.0
    for a, b in zip(ours, theirs):
        if len(a) != len(b):
            continue
        diff = max((abs(x - y) for sa, sb in zip(a, b) for x, y in zip(sa, sb)), default=0.0)
        if diff <= WINDOW_S:
            same += 1
            worst = max(worst, diff)
    return same, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2500, help="clips to synthesise (ignored with --manifest)")
    parser.add_argument("--manifest", type=Path, default=None, help="score this Caspi manifest instead")
    parser.add_argument("--out", type=Path, default=None, help="keep the synthesised corpus here (default: a temp dir)")
    parser.add_argument("--baseline-clips", type=int, default=200, help="clips for the clip-by-clip baseline")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per batched model call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both VAD runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cuts, synth_s = corpus(args, Path(tmp))

        start = time.perf_counter()
        clips = [cut.load_audio()[0] for cut in cuts]  # (T,) float32 each
        decode_s = time.perf_counter() - start

    start = time.perf_counter()
    rates = [len(cut_text(cut).replace(" ", "")) / cut.duration for cut in cuts]  # characters per second
    rate_s = time.perf_counter() - start
    assert len(rates) == len(cuts)

    model = load_vad_model()
    vad_measures(clips[:8], model=model, num_threads=args.threads)  # warm-up: JIT profiling runs
    start = time.perf_counter()
    measures = vad_measures(clips, model=model, batch_size=args.batch_size, num_threads=args.threads)
    batched_s = time.perf_counter() - start

    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    k = max(1, min(args.baseline_clips, len(clips)))
    subset = [order[int(j * len(order) / k)] for j in range(k)]  # an even spread over the lengths
    base_clips = [clips[i] for i in subset]
    base_s, base_segments = clip_by_clip(base_clips, model, args.threads)

    audio_s = sum(len(x) for x in clips) / SAMPLE_RATE
    base_audio_s = sum(len(x) for x in base_clips) / SAMPLE_RATE
    base_all_s = base_s * audio_s / base_audio_s  # extrapolated to every clip, by audio seconds
    windows = sum(num_windows(len(x)) for x in clips)
    batches = [order[::-1][i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    padded = sum(len(b) * num_windows(len(clips[b[0]])) for b in batches)  # windows computed, padding included

    ours = [  # the batched path's segments for the baseline clips
        speech_segments(p, num_samples=len(x))
        for x, p in zip(base_clips, speech_probabilities(base_clips, model=model, num_threads=args.threads))
    ]
    same, worst = agreement(ours, base_segments)

    n = len(clips)
    print(
        f"{n} clips, {audio_s / 3600:.2f} h of audio (mean {audio_s / n:.2f} s, {windows} windows of {WINDOW}); "
        f"torch threads {args.threads}, batch {args.batch_size}; synthesis {synth_s:.1f} s (setup)"
    )
    print(f"{'step':<50} {'clips':>6} {'seconds':>9} {'clips/s':>9}")
    rows = [
        ("decode (cut.load_audio)", n, decode_s),
        ("rate check (chars/s from manifest)", n, rate_s),
        (f"vad_measures, batched ({args.batch_size} clips/call)", n, batched_s),
        (f"get_speech_timestamps clip by clip ({k} clips)", k, base_s),
        ("  ... extrapolated to every clip", n, base_all_s),
    ]
    for name, count, seconds in rows:
        print(f"{name:<50} {count:>6} {seconds:>9.2f} {count / seconds:>9.1f}")
    print(f"speed-up batched / clip by clip: {base_all_s / batched_s:.1f}x")
    print(f"batched padding: {padded - windows} of {padded} windows computed are padding ({1 - windows / padded:.1%})")
    print(f"segments vs get_speech_timestamps on the {k} baseline clips: {same}/{k} match (worst {worst * 1e3:.0f} ms)")
    coverage = np.array([m["speech_coverage"] for m in measures])
    print(f"speech coverage: median {np.median(coverage):.2f}, < 0.2 on {np.sum(coverage < 0.2)} clips")
    audit_s = decode_s + rate_s + batched_s
    budget_audio_s = BUDGET_CLIPS * BUDGET_MEAN_S
    scaled = audit_s * budget_audio_s / audio_s  # decode and VAD both scale with audio seconds
    verdict = "PASS" if scaled <= BUDGET_S else "FAIL"
    print(
        f"audit estimate (decode + rate + batched vad): {audit_s:.1f} s for {n} clips / {audio_s:.0f} s of audio "
        f"-> {scaled:.1f} s for {BUDGET_CLIPS} clips x {BUDGET_MEAN_S:g} s; budget {BUDGET_S:.0f} s: {verdict}"
    )
    base_scaled = (decode_s + rate_s + base_all_s) * budget_audio_s / audio_s
    print(f"same with clip-by-clip get_speech_timestamps instead: {base_scaled:.1f} s")


if __name__ == "__main__":
    main()
