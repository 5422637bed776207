"""The audit with the Round-1 model as a scorer: the `loss` scorer (teacher-forced loss per token of the claimed
transcript, z-scored within each domain) against the model-free scorers alone, per domain, on a Round 1 that heard
only studio audio.

    python benchmarks/bench_audit_model.py --seed 0          # RESULTS.md's table (about 7 minutes on 2 cores)
    python benchmarks/bench_audit_model.py --seed 0 --n-round1 64 --n-audit 120 --epochs 1     # a smoke run

Self-contained, under OUT (default runs/bench-audit-model/seed-S; a folder per corpus size, Round 1 and audit, each
made once, so a re-run with other loss-scorer settings measures nothing again):
1. `synthesize` once: the audit corpus (the training split: all four domains, `--error-rate` planted errors of six
   kinds) and Round 1's data (the clean eval split: its studio clips train Round 1; 25 clips of each domain are
   held out for Round 1's CER);
2. Round 1: `recipes/demo-cpu.yaml` (a tiny Qwen3-ASR from scratch) on the studio clips only;
3. the audit of the corpus (`--all`) with the default scorers (text, rate, vad), then again with the loss scorer on
   Round 1 added (same folder: the model-free measurements come from the cache).

Printed per domain: recall of every planted error and of wrong transcripts (another utterance's text) without and
with the loss scorer, precision, the AUC of the loss z-score for wrong transcripts against clean samples, and what
the scorer says it can see there (the swap probe's recall and AUC, `caspi.audit.scorers.LossScorer`), so the
visibility it reports without ground truth can be checked against the recall it really has.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from lhotse import CutSet

from caspi.audit.run import audit
from caspi.audit.scorers import robust_scores, separation_auc
from caspi.config import apply_overrides, load_recipe, validate_recipe_dict
from caspi.data.cuts import cut_domain, read_manifest, write_manifest
from caspi.data.synth import DOMAINS, synthesize
from caspi.testing import planted_errors
from caspi.train.loop import train

HELD_OUT = 25  # clean clips per domain kept out of Round 1's training, for its CER


def round1_data(corpus: Path) -> tuple[Path, Path]:
    """(Round 1's training manifest: the eval split's studio clips less the held-out ones, its eval manifest: the
    held-out clips of every domain)."""
    by_domain: dict[str, list] = {}
    for cut in sorted(read_manifest(corpus / "eval.jsonl.gz"), key=lambda c: c.id):
        by_domain.setdefault(cut_domain(cut), []).append(cut)
    held = [c for d in DOMAINS for c in by_domain[d][:HELD_OUT]]
    studio = by_domain["studio"][HELD_OUT:]
    return (write_manifest(CutSet.from_cuts(studio), corpus / "round1-train.jsonl.gz"),
            write_manifest(CutSet.from_cuts(held), corpus / "round1-eval.jsonl.gz"))


def final_cers(run_dir: Path) -> dict[str, float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last = [r for r in records if r["kind"] == "eval"][-1]
    return {d: last[f"cer/{d}"] for d in DOMAINS if f"cer/{d}" in last}


def scores_of(out: Path, name: str) -> dict[str, dict]:
    """The newest cached measurement of scorer `name` per sample id (scores.jsonl)."""
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["values"] for r in rows if r["scorer"] == name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="synthesis and training seed")
    parser.add_argument("--n-round1", type=int, default=1000, help="studio clips Round 1 trains on")
    parser.add_argument("--n-audit", type=int, default=1200, help="clips audited (all four domains)")
    parser.add_argument("--error-rate", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=20, help="Round 1's epochs (demo-cpu: 20)")
    parser.add_argument("--out", default=None, help="default runs/bench-audit-model/seed-S")
    parser.add_argument("overrides", nargs="*", help="overrides of the loss scorer's settings, e.g. "
                                                     "audit.scorers.loss.max_z=3.5")
    args = parser.parse_args()
    out = Path(args.out or f"runs/bench-audit-model/seed-{args.seed}")
    corpus = out / f"corpus-{args.n_audit}-{args.n_round1}"
    run_dir = out / f"round1-{args.n_round1}-e{args.epochs}"
    audit_dir = out / f"audit-{args.n_audit}-{run_dir.name}"
    times: dict[str, float] = {}

    started = time.perf_counter()
    if not (corpus / "train.jsonl.gz").is_file():
        # Round 1's clips: the studio quarter of the eval split, plus the held-out ones.
        synthesize(corpus, args.n_audit, 4 * (args.n_round1 + HELD_OUT), seed=args.seed, error_rate=args.error_rate,
                   progress=False)
    r1_train, r1_eval = round1_data(corpus)
    times["synth"] = time.perf_counter() - started

    started = time.perf_counter()
    if not (run_dir / "final").is_dir():
        recipe = load_recipe("recipes/demo-cpu.yaml", [
            f"data.train_manifest={r1_train}", f"data.eval_manifest={r1_eval}", f"train.seed={args.seed}",
            f"train.epochs={args.epochs}", "eval.every_steps=100000", f"eval.samples={HELD_OUT * len(DOMAINS)}",
            "train.save_every_steps=100000"])
        train(recipe, run_dir, progress=False)
    times["round 1"] = time.perf_counter() - started
    cers = final_cers(run_dir)

    manifest = corpus / "train.jsonl.gz"
    base = validate_recipe_dict(apply_overrides({"name": "bench"}, ["audit.workers=2"])).audit
    started = time.perf_counter()
    without = audit(manifest, audit_dir, base, all_samples=True, progress=False).report
    times["audit, model-free"] = time.perf_counter() - started
    loss_recipe = validate_recipe_dict(apply_overrides({"name": "bench"}, [
        "audit.workers=2", "audit.scorers.loss.enabled=true", f"audit.scorers.loss.model={run_dir}",
        *args.overrides]))
    started = time.perf_counter()
    result = audit(manifest, audit_dir, loss_recipe.audit, all_samples=True, progress=False)
    times["audit, + loss"] = time.perf_counter() - started
    with_loss = result.report

    planted = {cut_id: record["kind"] for cut_id, record in planted_errors(corpus).items()}
    domain_of = {c.id: cut_domain(c) for c in read_manifest(manifest)}
    losses = scores_of(audit_dir, "loss")
    ids = sorted(losses)
    cfg = loss_recipe.audit.scorers.loss
    z = robust_scores([losses[i]["loss"] for i in ids], [domain_of[i] for i in ids], cfg.min_domain_samples,
                      cfg.max_z).z
    z_of = dict(zip(ids, z))
    flagged = {name: {f["id"]: f["reasons"] for f in rep["flagged"]} for name, rep in
               (("without", without), ("with", with_loss))}

    def row(domain: str | None) -> str:
        keep = [i for i in domain_of if domain is None or domain_of[i] == domain]
        bad = [i for i in keep if i in planted]
        wrong = [i for i in keep if planted.get(i) == "wrong_transcript"]
        clean = [i for i in keep if i not in planted]
        cells = [f"{domain or 'all':<9}", f"{len(keep):>5}", f"{len(bad):>4}", f"{len(wrong):>5}"]
        for name in ("without", "with"):
            f = flagged[name]
            hits = [i for i in keep if i in f]
            cells += [f"{sum(i in f for i in bad) / max(1, len(bad)):>6.3f}",
                      f"{sum(i in f for i in wrong) / max(1, len(wrong)):>6.3f}",
                      f"{sum(i in planted for i in hits) / max(1, len(hits)):>6.3f}"]
        auc = separation_auc([z_of[i] for i in clean], [z_of[i] for i in wrong])
        cells.append(f"{auc:>6.3f}")
        if domain is not None:
            v = with_loss["domain_statistics"][domain]["loss"]
            cells += [f"{v['swap_recall']:>6.3f}", f"{v['swap_auc']:>6.3f}", f"{v['median_loss']:>6.2f}",
                      "sees" if v["sees"] else "cannot see"]
        return " ".join(cells)

    print(f"\nRound 1: demo-cpu on {args.n_round1} studio clips, {args.epochs} epochs; CER on {HELD_OUT} held-out "
          "clips per domain: " + ", ".join(f"{d} {c:.3f}" for d, c in cers.items()))
    print(f"audit corpus: {len(domain_of)} clips, {len(planted)} planted errors "
          f"({Counter(planted.values())['wrong_transcript']} wrong transcripts); loss scorer {cfg.model_dump()}")
    print(f"\n{'':<9} {'':>5} {'':>4} {'':>5} {'model-free':^20} {'+ loss':^20} {'':>6} {'what the scorer says':^27}")
    print(f"{'domain':<9} {'clips':>5} {'bad':>4} {'wrong':>5} " + "recall r.wrng  prec. " * 2
          + f"{'AUC z':>6} {'swap r':>6} {'swap A':>6} {'median':>6} verdict")
    for domain in DOMAINS:
        print(row(domain))
    print(row(None))
    false_alarms = Counter(r for i, rs in flagged["with"].items() if i not in planted for r in rs)
    caught = Counter(r for i, rs in flagged["with"].items() if planted.get(i) == "wrong_transcript" for r in rs)
    print(f"\nwith loss: false alarms {dict(false_alarms)}; reasons on wrong transcripts {dict(caught)}")
    for name, rep in (("model-free", without), ("+ loss", with_loss)):
        print(f"decision {name}: {rep['decision']} at {rep['low_quality_percentage']:.1f} % "
              f"(truth {100 * len(planted) / len(domain_of):.1f} %)")
    print("vouches for: " + ", ".join(with_loss["visibility"]["loss"]["sees"]) + "; cannot see: "
          + (", ".join(with_loss["visibility"]["loss"]["cannot_see"]) or "-"))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    wrong_z = np.array([z_of[i] for i in z_of if planted.get(i) == "wrong_transcript"])
    print(f"loss z of wrong transcripts: median {np.median(wrong_z):.1f}, min {wrong_z.min():.1f}")


if __name__ == "__main__":
    main()
