"""Bootstrap confidence intervals of WER and CER: Caspi's vectorised `caspi.eval.bootstrap` against the straightforward
per-resample jiwer loop, on the same utterances, in the same run.

Data: `--utterances` synthetic Hebrew-ish pairs (references of 3-20 words drawn from a 48-word list, a final period
that normalisation removes; hypotheses with random substitutions, deletions and insertions at ~15 % WER overall,
from 9 % to 21 % across 4 domains). Both paths compute the interval over `--resamples` bootstrap resamples:

- vectorised: `utterance_counts` (normalise and align every pair once, words and characters), then `bootstrap_ci`
  for WER and for CER (each resample is a weighted sum of the count arrays);
- baseline: per resample, draw n utterance indices with replacement and call `jiwer.wer` and `jiwer.cer` on the
  resampled lists (re-aligning every pair each time). Its strings are normalised once beforehand, outside its
  timing. It is slow, so it runs `--baseline-resamples` resamples and is extrapolated linearly to `--resamples`
  (every resample is the same work: n pairs aligned).

Check: for every baseline resample, Σ errors / Σ reference length of the drawn utterances from the counts (the
vectorised path's formula, as multinomial weights) must equal the baseline's `jiwer.wer` / `jiwer.cer` on that
resample's lists. The two bootstrap distributions' agreement with a resample-by-resample reference loop is tested in
tests/eval/test_bootstrap.py. Target: 10,000 utterances with 1,000 resamples in seconds.

    .venv/bin/python benchmarks/bench_scoring.py [--utterances 10000] [--resamples 1000] [--baseline-resamples 20]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import jiwer
import numpy as np

from caspi.data.text import for_scoring
from caspi.eval.bootstrap import bootstrap_ci
from caspi.scoring import rate, utterance_counts

WORDS = (
    "שלום עולם היום מחר אתמול בבוקר בערב ירד גשם שמש חם קר אני אתה היא הוא אנחנו הם הולך באה ביתה עבודה "
    "ספר מחשב טלפון חדשות ממשלה כנסת מדינה ירושלים תל אביב חיפה רכבת אוטובוס כביש מהיר לאט טוב רע גדול "
    "קטן חדש ישן תודה בבקשה"
).split()  # 48 words
DOMAINS = {"studio": 0.09, "broadcast": 0.13, "phone": 0.17, "whatsapp": 0.21}  # target WER of each domain
TARGET_SECONDS = 10.0  # "in seconds": the vectorised path, counts included


def synthetic_pairs(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(references, hypotheses, domains): each reference word is substituted, deleted or followed by an inserted
    word with probabilities 0.6, 0.2, 0.2 × the domain's WER."""
    rng = random.Random(seed)
    refs, hyps, domains = [], [], []
    names = list(DOMAINS)
    for i in range(n):
        domain = names[i % len(names)]
        wer = DOMAINS[domain]
        ref = [rng.choice(WORDS) for _ in range(rng.randint(3, 20))]
        hyp = []
        for word in ref:
            u = rng.random()
            if u < 0.6 * wer:
                hyp.append(rng.choice([w for w in WORDS if w != word]))  # substitution
            elif u < 0.8 * wer:
                continue  # deletion
            else:
                hyp.append(word)
                if u < wer:
                    hyp.append(rng.choice(WORDS))  # insertion
        refs.append(" ".join(ref) + ".")
        hyps.append(" ".join(hyp))
        domains.append(domain)
    return refs, hyps, domains


def vectorised(refs: list[str], hyps: list[str], resamples: int, seed: int):
    """Counts once, then both intervals; returns (counts, (wer lo, hi), (cer lo, hi), seconds of each step)."""
    started = time.perf_counter()
    counts = utterance_counts(refs, hyps, "scoring")
    t_counts = time.perf_counter() - started
    started = time.perf_counter()
    wer_ci = bootstrap_ci(counts.word_errors, counts.ref_words, resamples=resamples, seed=seed)
    t_wer = time.perf_counter() - started
    started = time.perf_counter()
    cer_ci = bootstrap_ci(counts.char_errors, counts.ref_chars, resamples=resamples, seed=seed)
    t_cer = time.perf_counter() - started
    return counts, wer_ci, cer_ci, (t_counts, t_wer, t_cer)


def baseline(refs: list[str], hyps: list[str], resamples: int, seed: int):
    """Per resample: draw indices, jiwer.wer and jiwer.cer on the resampled lists (strings already normalised).
    Returns (indices of each resample, WERs, CERs, seconds in WER calls, seconds in CER calls)."""
    rng = np.random.default_rng(seed)
    n = len(refs)
    draws, wers, cers = [], [], []
    t_wer = t_cer = 0.0
    for _ in range(resamples):
        idx = rng.integers(0, n, n)  # (n,) utterances drawn with replacement
        r = [refs[i] for i in idx]
        h = [hyps[i] for i in idx]
        started = time.perf_counter()
        wers.append(jiwer.wer(r, h))
        t_wer += time.perf_counter() - started
        started = time.perf_counter()
        cers.append(jiwer.cer(r, h))
        t_cer += time.perf_counter() - started
        draws.append(idx)
    return draws, wers, cers, t_wer, t_cer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--baseline-resamples", type=int, default=20, help="timed, then extrapolated to --resamples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    refs, hyps, domains = synthetic_pairs(args.utterances, args.seed)
    load = os.getloadavg()[0]
    print(f"{args.utterances} utterances (4 domains), {args.resamples} resamples; "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at start")

    counts, wer_ci, cer_ci, (t_counts, t_wer, t_cer) = vectorised(refs, hyps, args.resamples, args.seed)
    t_ours = t_counts + t_wer + t_cer
    wer, cer = rate(counts.word_errors, counts.ref_words), rate(counts.char_errors, counts.ref_chars)
    print(f"WER {wer:.4f} [{wer_ci[0]:.4f}, {wer_ci[1]:.4f}]  CER {cer:.4f} [{cer_ci[0]:.4f}, {cer_ci[1]:.4f}]  "
          f"({int(counts.ref_words.sum())} words, {int(counts.ref_chars.sum())} characters)")
    dom = np.array(domains)
    per_domain = ", ".join(f"{d} {rate(counts.word_errors[dom == d], counts.ref_words[dom == d]):.3f}"
                           for d in DOMAINS)
    print(f"  WER by domain: {per_domain}")
    print(f"vectorised: utterance_counts {t_counts:.2f} s + bootstrap_ci WER {t_wer:.2f} s + CER {t_cer:.2f} s "
          f"= {t_ours:.2f} s")

    norm_refs = [for_scoring(x) for x in refs]
    norm_hyps = [for_scoring(x) for x in hyps]
    draws, wers, cers, b_wer, b_cer = baseline(norm_refs, norm_hyps, args.baseline_resamples, args.seed + 1)
    scale = args.resamples / args.baseline_resamples
    t_base = (b_wer + b_cer) * scale
    print(f"baseline, {args.baseline_resamples} resamples: jiwer.wer {b_wer:.2f} s + jiwer.cer {b_cer:.2f} s "
          f"({(b_wer + b_cer) / args.baseline_resamples:.3f} s per resample)")
    print(f"  extrapolated linearly to {args.resamples} resamples: WER {b_wer * scale:.0f} s + CER "
          f"{b_cer * scale:.0f} s = {t_base:.0f} s")

    # Same draws, two ways: Σe/Σr weighted by how often each utterance was drawn vs jiwer on the resampled lists.
    worst = 0.0
    for idx, w, c in zip(draws, wers, cers):
        weights = np.bincount(idx, minlength=args.utterances)  # (n,) multinomial counts of this draw
        ours_w = (weights @ counts.word_errors) / (weights @ counts.ref_words)
        ours_c = (weights @ counts.char_errors) / (weights @ counts.ref_chars)
        worst = max(worst, abs(ours_w - w), abs(ours_c - c))
    assert worst < 1e-12, f"count-based resample rate differs from jiwer's by {worst:g}"
    print(f"check: on all {len(draws)} baseline resamples, count-based WER and CER equal jiwer's "
          f"(max |difference| {worst:.1e})")

    print(f"load average {os.getloadavg()[0]:.2f} at end")
    # WER alone, as in the usual loop over jiwer.wer; the counts step still aligns characters too (not subtracted).
    print(f"WER only: baseline {b_wer * scale:.0f} s vs utterance_counts + bootstrap_ci WER {t_counts + t_wer:.2f} s: "
          f"{b_wer * scale / (t_counts + t_wer):.0f}x")
    verdict = "PASS" if t_ours <= TARGET_SECONDS else "FAIL"
    print(f"ratio baseline (extrapolated) / vectorised: {t_base / t_ours:.0f}x; "
          f"target {args.utterances} utterances x {args.resamples} resamples in <= {TARGET_SECONDS:g} s: "
          f"{t_ours:.2f} s, {verdict}")


if __name__ == "__main__":
    main()
