"""Audit speed: 2,500 samples with the text + rate + vad scorers on this machine's cores, against the floor of
only decoding the same audio with the same worker pool (measured in the same run); and the default audit (a 10 %
decision sample, then every sample scored by the same scorers for the cleaned manifest), without a cache.

Target (issue #3): ≤ 3 minutes for 2,500 samples on 2 cores (seed 001 budgeted 2–3 hours for its aligner audit).

    python benchmarks/bench_audit_speed.py --n 2500
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import time
from pathlib import Path

from caspi.audit.run import CHUNK, _decode, audit
from caspi.config import AuditConfig
from caspi.data.cuts import read_manifest
from caspi.data.synth import synthesize


def decode_only(manifest: Path, workers: int) -> float:
    cuts = list(read_manifest(manifest))
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        for start in range(0, len(cuts), CHUNK):
            pool.map(_decode, [c.to_dict() for c in cuts[start:start + CHUNK]])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-audit-speed")
    args = parser.parse_args()

    corpus = Path(args.out) / f"corpus-{args.n}"
    if not (corpus / "train.jsonl.gz").is_file():
        synthesize(corpus, args.n, 0, seed=3, error_rate=0.08, progress=True)
    manifest = corpus / "train.jsonl.gz"
    audio_minutes = sum(c.duration for c in read_manifest(manifest)) / 60

    floor = decode_only(manifest, args.workers)
    out = Path(args.out) / "audit"
    shutil.rmtree(out, ignore_errors=True)  # no cache: measure everything
    started = time.perf_counter()
    result = audit(manifest, out, AuditConfig(workers=args.workers), all_samples=True)
    seconds = time.perf_counter() - started

    sampled_out = Path(args.out) / "audit-sampled"
    shutil.rmtree(sampled_out, ignore_errors=True)
    started = time.perf_counter()
    sampled = audit(manifest, sampled_out, AuditConfig(workers=args.workers))
    sampled_seconds = time.perf_counter() - started

    n = result.report["total_samples"]
    print(f"\n{n} samples, {audio_minutes:.1f} min of audio, {args.workers} decoding workers")
    print(f"{'what':<46} {'seconds':>8} {'samples/s':>10}")
    print(f"{'decode only (floor)':<46} {floor:>8.1f} {n / floor:>10.1f}")
    print(f"{'audit --all: text + rate + vad':<46} {seconds:>8.1f} {n / seconds:>10.1f}")
    what = f"audit: {sampled.report['decision_sample']['scored_samples']} decided, all cleaned"
    print(f"{what:<46} {sampled_seconds:>8.1f} {n / sampled_seconds:>10.1f}")
    verdict = "met" if seconds <= 180 else "NOT met"
    print(f"ratio audit / decode-only: {seconds / floor:.2f}×; target ≤ 180 s: {verdict}")


if __name__ == "__main__":
    main()
