"""Does the loop learn? `recipes/demo-cpu.yaml` on the demo corpus, timed, per seed: the studio-domain CER of the
trained model against the same eval subset decoded by the untrained base model (measured in the same run).

Target (DESIGN.md, "Training loop"): studio CER ≤ 0.5 within 10 minutes of training on 2 CPU cores, on any seed.
An untrained model scores above 2 (it writes junk up to max_new_tokens); one that learned only a text prior sits
near 0.8 (REFERENCE.md), so the absolute figure is what counts.

    python benchmarks/bench_learning.py data.train_manifest=M --seeds 0 1   # overrides before --seeds; needs
                                                                              # data/demo (make demo)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from caspi.config import load_recipe
from caspi.eval.metrics import score
from caspi.train.loop import train


def studio_cers(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["step"], r["cer/studio"]) for r in records if r["kind"] == "eval"]


def untrained_studio_cer(run_dir: Path, recipe) -> float:
    """CER of the base model (RUN/base, what training started from) on the studio clips of the eval subset."""
    from caspi.data.batches import AsrBatchDataset
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo-cpu.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/bench-learning")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.epochs=20")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, [*args.overrides, f"train.seed={seed}"])
        for manifest in (recipe.data.train_manifest, recipe.data.eval_manifest):
            if not Path(manifest).is_file():
                raise SystemExit(f"{manifest} not found: run `make demo` first (it synthesises data/demo)")
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
