"""Audit quality: per-kind recall and overall precision of the audit's flags against the errors planted by
`caspi synth` (listed in planted_errors.jsonl), next to a random flagger that flags as many samples (the baseline:
its expected recall is the flagged share, its expected precision the planted share).

Targets (issue #3), with the model-free scorers + VAD: recall ≥ 0.95 for silence/noise audio, English text,
half-cut transcripts and half-cut audio; precision ≥ 0.90. Other-utterance transcripts need the `asr` scorer.

    python benchmarks/bench_audit_quality.py --n 1200 --seed 1              # synthesises into runs/bench-audit
    python benchmarks/bench_audit_quality.py --corpus runs/demo/data/round2  # an existing synthesised corpus
    python benchmarks/bench_audit_quality.py ... audit.scorers.asr.enabled=true audit.scorers.asr.model=runs/demo/round1
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from caspi.audit.run import audit
from caspi.config import AuditConfig, apply_overrides, validate_recipe_dict
from caspi.data.synth import ERROR_KINDS, synthesize
from caspi.testing import planted_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="a folder written by `caspi synth` (default: synthesise one)")
    parser.add_argument("--n", type=int, default=1200, help="training clips to synthesise")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--error-rate", type=float, default=0.08)
    parser.add_argument("--out", default="runs/bench-audit")
    parser.add_argument("overrides", nargs="*", help="recipe overrides of the audit section, e.g. "
                                                     "audit.scorers.rate.max_abs_z=3")
    args = parser.parse_args()

    out = Path(args.out)
    corpus = Path(args.corpus) if args.corpus else out / f"corpus-{args.n}-seed{args.seed}"
    if not args.corpus and not (corpus / "train.jsonl.gz").is_file():
        synthesize(corpus, args.n, 0, seed=args.seed, error_rate=args.error_rate, progress=True)
    recipe = validate_recipe_dict(apply_overrides({"name": "bench"}, args.overrides))
    config: AuditConfig = recipe.audit
    started = time.perf_counter()
    result = audit(corpus / "train.jsonl.gz", out / f"audit-{corpus.name}", config, all_samples=True)
    seconds = time.perf_counter() - started

    planted = {cut_id: record["kind"] for cut_id, record in planted_errors(corpus).items()}
    flagged = {f["id"]: f["reasons"] for f in result.report["flagged"]}
    n = result.report["total_samples"]
    share_flagged = len(flagged) / n

    print(f"\n{n} samples, {len(planted)} planted errors ({len(planted) / n:.1%}), {len(flagged)} flagged; "
          f"scorers {', '.join(s['name'] for s in result.report['scorers'])}; {seconds:.1f} s")
    print(f"{'kind':<22} {'planted':>7} {'caught':>6} {'recall':>7} {'random':>7}  reasons")
    for kind in ERROR_KINDS:
        ids = [i for i, k in planted.items() if k == kind]
        caught = [i for i in ids if i in flagged]
        reasons = Counter(r for i in caught for r in flagged[i])
        recall = len(caught) / len(ids) if ids else float("nan")
        print(f"{kind:<22} {len(ids):>7} {len(caught):>6} {recall:>7.3f} {share_flagged:>7.3f}  "
              + ", ".join(f"{r} {c}" for r, c in reasons.most_common()))
    true_pos = sum(i in planted for i in flagged)
    precision = true_pos / len(flagged) if flagged else float("nan")
    false_reasons = Counter(r for i, rs in flagged.items() if i not in planted for r in rs)
    print(f"{'precision':<22} {'':>7} {true_pos:>6} {precision:>7.3f} {len(planted) / n:>7.3f}  false alarms: "
          + (", ".join(f"{r} {c}" for r, c in false_reasons.most_common()) or "none"))
    report = result.report
    print(f"decision {result.decision} at {result.low_quality_percentage:.1f} % estimated low quality "
          f"({report['sample_low_quality_percentage']:.1f} % of the sample flagged, "
          f"{report['estimate']['expected_false_alarms']:.1f} false alarms expected)")


if __name__ == "__main__":
    main()
