"""Does the loop learn? `recipes/demo-cpu.yaml` on the demo corpus, timed, per seed: the studio-domain CER of the
trained model against the same eval subset decoded by the untrained base model (measured in the same run).

Target (DESIGN.md, "Training loop"): studio CER ≤ 0.5 within 10 minutes of training on 2 CPU cores, on any seed.
An untrained model scores above 2 (it writes junk up to max_new_tokens); one that learned only a text prior sits
near 0.8 (REFERENCE.md), so the absolute figure is what counts.

    python benchmarks/bench_learning.py --seeds 0 1        # what `make bench` runs (RESULTS.md's table)
    python benchmarks/bench_learning.py --seeds 0 --n-train 48 --n-eval 16 train.epochs=1 eval.every_steps=5
                                                           # a smoke run (seconds; the figures mean nothing)

Self-contained: the data is the first (single-round) demo's corpus, made here under DATA (default
runs/bench-learning/data) when missing: `caspi synth` (all four domains, seed 0, 8 % planted errors),
`caspi import`, and the Phase 0 audit with the recipe, whose cleaned manifest is the training set. The run of
the first seed (runs/bench-learning/seed-0) is also the model of the audit's `asr`-scorer row in RESULTS.md
(`make bench` runs that after this).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from caspi.cli import main as caspi
from caspi.config import load_recipe
from caspi.scoring import score
from caspi.train.loop import train


def studio_cers(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["step"], r["cer/studio"]) for r in records if r["kind"] == "eval"]


def untrained_studio_cer(run_dir: Path, recipe) -> float:
    """CER of the base model (RUN/base, what training started from) on the studio clips of the eval subset."""
    from caspi.data.dataset import AsrBatchDataset
    from caspi.data.cuts import cut_domain, cut_text, read_manifest
    from caspi.models.families import get_family
    from lhotse import CutSet

    family = get_family(recipe.model.family)
    model, processor = family.load(str(run_dir / "base"), dtype=torch.float32)
    cuts = [c for c in sorted(read_manifest(recipe.data.eval_manifest), key=lambda c: c.id)
            if cut_domain(c) == "studio"][: recipe.eval.samples // 4]
    batch = AsrBatchDataset(for_training_text=False)[CutSet.from_cuts(cuts)]
    audio = [batch["audio"][i, : int(n)].numpy() for i, n in enumerate(batch["audio_lens"])]
    hyps = family.decode(model, processor, audio, max_new_tokens=recipe.eval.max_new_tokens,
                         batch_size=recipe.eval.batch_size)
    return score([cut_text(c) for c in cuts], hyps, recipe.eval.normaliser).cer


def demo_data(root: Path, recipe: str, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """The single-round demo's corpus under `root`, made once: (the audit's cleaned training manifest, the eval
    manifest)."""
    cleaned, eval_manifest = root / "phase0" / "cleaned.jsonl.gz", root / "corpus" / "eval.jsonl.gz"
    if cleaned.is_file() and eval_manifest.is_file():
        return cleaned, eval_manifest
    imported = root / "imported" / "train.jsonl.gz"
    steps = [
        ["synth", "--out", str(root / "corpus"), "--n-train", str(n_train), "--n-eval", str(n_eval), "--seed", "0",
         "--error-rate", "0.08"],
        ["import", str(root / "corpus" / "train.jsonl.gz"), "--out", str(imported)],
        ["audit", "--manifest", str(imported), "--out", str(root / "phase0"), "--recipe", recipe],
    ]
    for argv in steps:
        print("caspi " + " ".join(argv), flush=True)
        if caspi(argv) != 0:
            raise SystemExit(f"`caspi {' '.join(argv)}` failed; see its message above")
    if not cleaned.is_file():
        raise SystemExit(f"the audit wrote no cleaned manifest at {cleaned}")
    return cleaned, eval_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo-cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/bench-learning")
    parser.add_argument("--data", default=None, help="where the demo corpus is made (default: OUT/data)")
    parser.add_argument("--n-train", type=int, default=1200, help="training clips synthesised (first demo: 1200)")
    parser.add_argument("--n-eval", type=int, default=300, help="eval clips synthesised (first demo: 300)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.epochs=20")
    args = parser.parse_args()

    data = Path(args.data) if args.data else Path(args.out) / "data"
    train_manifest, eval_manifest = demo_data(data, args.recipe, args.n_train, args.n_eval)
    rows = []
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, [f"data.train_manifest={train_manifest}",
                                           f"data.eval_manifest={eval_manifest}", *args.overrides,
                                           f"train.seed={seed}"])
        run_dir = Path(args.out) / f"seed-{seed}"
        started = time.perf_counter()
        result = train(recipe, run_dir, progress=False)
        minutes = (time.perf_counter() - started) / 60
        curve = studio_cers(run_dir)
        rows.append((seed, result.step, minutes, untrained_studio_cer(run_dir, recipe), curve[-1][1], curve))

    print(f"\n{'seed':>4} {'steps':>6} {'minutes':>8} {'untrained CER':>14} {'trained CER':>12} {'ratio':>7}  "
          "target ≤ 0.5 in ≤ 10 min")
    for seed, steps, minutes, before, after, _ in rows:
        ok = "met" if after <= 0.5 and minutes <= 10 else "NOT met"
        print(f"{seed:>4} {steps:>6} {minutes:>8.2f} {before:>14.3f} {after:>12.3f} {after / before:>7.3f}  {ok}")
    for seed, *_, curve in rows:
        print(f"seed {seed} studio CER by step: " + ", ".join(f"{s}: {c:.3f}" for s, c in curve))


if __name__ == "__main__":
    main()
