"""Long recordings (`caspi.longform.decode_long`): peak memory and real-time factor at 1, 5 and 20 minutes of audio,
and the cost of beam search (beam 1 vs 5, seconds per 30 s chunk), with a tiny random Qwen3-ASR on CPU.

Each length runs in a fresh subprocess, so its peak resident set (`ru_maxrss`, the kernel's high-water mark: it sees
torch's allocations, which tracemalloc does not) is its own. The child loads the model, decodes one warm-up batch
of 30 s chunks and runs the VAD once (`baseline`: everything one batch needs), then loads the recording and decodes
it in chunks (`peak`). Flat memory means peak - baseline grows only by the audio itself (float32, 3.84 MB per
minute), not by the number of chunks.

Each length is measured twice: with glibc's default malloc, and with freed memory handed back to the system
(MALLOC_TRIM_THRESHOLD_=0, MALLOC_MMAP_THRESHOLD_=65536). By default glibc keeps what torch frees between batches,
whose tensors differ in shape from batch to batch, so the high-water mark creeps up with the number of batches
until it saturates (measured at 20 min: +54 MB from the first to the fourth batch of 8 chunks, then +1 MB); the
second run shows what decoding itself holds. Numbers: benchmarks/RESULTS.md, "Long recordings (issue #19)".

    .venv/bin/python benchmarks/bench_longform.py                  # 1, 5, 20 min; beam 1 vs 5
    .venv/bin/python benchmarks/bench_longform.py --minutes 1 5    # quicker

The recording (espeak-ng sentences with 0.5-1.0 s pauses) is synthesised once and cached (--cache).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 16_000
BATCH = 8  # chunks per generate call (EvalConfig.batch_size's default)
MAX_NEW_TOKENS = 48  # a random model writes junk until the limit: every chunk costs the same number of steps
TRIMMED = {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: freed memory goes back


def recording(cache: Path, minutes: float) -> np.ndarray:
    """The first `minutes` of a 20-minute recording of 12 espeak sentences in a seeded order, 0.5-1.0 s pauses."""
    path = cache / "longform-20min.f32"  # raw float32 samples, 16 kHz
    if not path.is_file():
        from caspi.data import synth

        clips = [synth.speak(text) for text in synth.sentences(12, seed=4)]
        rng = np.random.default_rng(0)
        parts, total = [], 0
        while total < 20 * 60 * SR:
            pause = np.zeros(int(rng.uniform(0.5, 1.0) * SR), np.float32)
            clip = clips[int(rng.integers(len(clips)))]
            parts += [pause, clip]
            total += len(pause) + len(clip)
        cache.mkdir(parents=True, exist_ok=True)
        np.concatenate(parts)[: 20 * 60 * SR].astype(np.float32).tofile(path)
    # Read just these samples into a fresh array: a memory map (or loading all 20 minutes) would count file pages
    # or a second copy in the resident set this benchmark measures.
    return np.fromfile(path, dtype=np.float32, count=int(minutes * 60 * SR))


def _model():
    import torch

    from caspi.data import synth
    from caspi.models import get_family

    torch.manual_seed(0)
    family = get_family("qwen3_asr")
    model, processor = family.tiny(synth.sentences(12, seed=4), seed=0, size="xs")
    return family, model.eval(), processor


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB → MiB


def child(minutes: float, cache: Path) -> dict:
    """One length in this process: baseline and peak RSS, decode time."""
    import torch

    from caspi.config import EvalConfig
    from caspi.data.vad import speech_probabilities
    from caspi.longform import decode_long

    torch.set_num_threads(1)
    family, model, processor = _model()
    warm = [np.zeros(30 * SR, np.float32)] * BATCH  # one full batch of 30 s chunks: what any length needs
    family.decode(model, processor, warm, max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH)
    speech_probabilities(warm[:1])  # silero's package and JIT model (~30 MB), loaded once per process
    del warm
    baseline = _rss_mb()
    audio = recording(cache, minutes)
    config = EvalConfig(batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS)
    started = time.perf_counter()
    result = decode_long(family, model, processor, [audio], config=config)[0]
    seconds = time.perf_counter() - started
    return {"minutes": minutes, "audio_mb": audio.nbytes / 2**20, "baseline_mb": baseline, "peak_mb": _rss_mb(),
            "seconds": seconds, "rtf": seconds / (len(audio) / SR), "chunks": len(result.chunks),
            "cap_cuts": sum(c["cut"] == "cap" for c in result.chunks)}


def beams(cache: Path, chunks: int = 8) -> dict:
    """Seconds per 30 s chunk, greedy vs beam 5, on the same chunks (one batch of `chunks`)."""
    import torch

    torch.set_num_threads(1)
    family, model, processor = _model()
    audio = recording(cache, chunks * 0.5)
    clips = [audio[i * 30 * SR:(i + 1) * 30 * SR] for i in range(chunks)]
    out = {}
    for num_beams in (1, 5, 1, 5):  # each twice, the first pass warms up; the second is reported
        started = time.perf_counter()
        family.decode(model, processor, clips, max_new_tokens=MAX_NEW_TOKENS, batch_size=chunks, num_beams=num_beams)
        out[f"beam{num_beams}_s_per_chunk"] = (time.perf_counter() - started) / chunks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/caspi-bench-longform"))
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--beams", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.cache)))
        return
    if args.beams:
        print(json.dumps(beams(args.cache)))
        return
    recording(args.cache, 0)  # synthesise once, before any timing
    for malloc, env in (("default malloc", {}), ("malloc trimmed", TRIMMED)):
        rows = []
        for minutes in args.minutes:
            out = subprocess.run([sys.executable, __file__, "--child", str(minutes), "--cache", str(args.cache)],
                                 check=True, capture_output=True, text=True, env={**os.environ, **env}).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            growth = r["peak_mb"] - r["baseline_mb"]
            print(f"{malloc}  {r['minutes']:>3g} min  {r['chunks']:>3} chunks ({r['cap_cuts']} at the cap)  audio "
                  f"{r['audio_mb']:5.1f} MB  RSS baseline {r['baseline_mb']:6.1f} MB  peak {r['peak_mb']:6.1f} MB "
                  f"(+{growth:5.1f})  {r['seconds']:5.1f} s  RTF {r['rtf']:.4f}", flush=True)
        first, last = rows[0], rows[-1]
        print(f"{malloc}: peak RSS {last['minutes']:g} min / {first['minutes']:g} min "
              f"{last['peak_mb'] / first['peak_mb']:.2f}x; growth {last['peak_mb'] - first['peak_mb']:.1f} MB for "
              f"{last['audio_mb'] - first['audio_mb']:.1f} MB more audio", flush=True)
    out = subprocess.run([sys.executable, __file__, "--beams", "--cache", str(args.cache)], check=True,
                         capture_output=True, text=True).stdout
    b = json.loads(out.strip().splitlines()[-1])
    print(f"beam 1: {b['beam1_s_per_chunk']:.3f} s per 30 s chunk; beam 5: {b['beam5_s_per_chunk']:.3f} s "
          f"({b['beam5_s_per_chunk'] / b['beam1_s_per_chunk']:.1f}x); {MAX_NEW_TOKENS} new tokens, batch {BATCH}")


if __name__ == "__main__":
    main()
