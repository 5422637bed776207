"""`caspi plan`'s memory per GPU against what the trainer really allocates on a CUDA device (issue #17).

    python benchmarks/bench_plan_memory.py [--out /tmp/bench-plan-memory] [--steps 4]   # needs a CUDA GPU

Needs CUDA and nothing else (no espeak-ng, no network): the clips are tones with Hebrew transcripts, imported with
`caspi import` from a folder. For each case, a tiny Qwen3-ASR of the real architecture (`model.tiny: s`, bf16
weights with the trainer's float32 masters, bf16 autocast) trains for a few steps through `caspi train` on
micro-batches of equal-length clips, and the trainer's own `mem_gib` (`torch.cuda.max_memory_allocated`, logged
every step) is set beside `caspi plan --json` for the same recipe and overrides. The plan's total holds the CUDA
context (`overhead`), which max_memory_allocated does not see, so the comparison leaves it out:

    predicted = plan total − overhead;  measured = max mem_gib over the logged steps;  ratio = predicted / measured

Cases: full fine-tune and a Strategy-B-like phase (projector + top-2 LLM layers + LM head), each with gradient
checkpointing on and off. A tiny model's memory is mostly activations and optimizer state, so this checks those
terms; the 1.7B's weights and logits terms are products of counts that tests/plan check by hand.

Without CUDA it says so and exits 2: there is nothing to compare on a CPU (its resident set is not the tensors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile as sf
import torch

from caspi.cli import main as caspi
from caspi.data.audio import SAMPLE_RATE
from caspi.testing import tone

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo-cpu.yaml"
SECONDS = 10.0  # every clip: the sampler's batches are then all of the longest clip, which the plan assumes
CLIPS, MICRO_BATCH = 64, 16
TEXT = "שלום עולם זה מבחן של זיכרון בזמן אימון המודל הקטן"  # Hebrew, about the length 10 s of speech holds
CASES = {
    "full": ["unfreeze.groups={all: {}}", "unfreeze.phases=[{name: full, start_epoch: 1, lr: {all: 1.0e-3}}]"],
    "strategy B": ["unfreeze.groups={projector: {}, llm_top: {top: 2}, lm_head: {}}",
                   "unfreeze.phases=[{name: B, start_epoch: 1, lr: {projector: 1.0e-3, llm_top: 1.0e-3, "
                   "lm_head: 1.0e-3}}]"],
}


def make_data(folder: Path) -> Path:
    audio = folder / "clips"
    audio.mkdir(parents=True, exist_ok=True)
    for i in range(CLIPS):
        sf.write(audio / f"c{i:03d}.flac", tone(SECONDS, freq=200.0 + 10 * i), SAMPLE_RATE)
        (audio / f"c{i:03d}.txt").write_text(TEXT, encoding="utf-8")
    manifest = folder / "train.jsonl.gz"
    if caspi(["import", str(audio), "--out", str(manifest), "--domain", "studio"]) != 0:
        raise SystemExit("caspi import failed")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/bench-plan-memory")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_plan_memory: no CUDA device here; this benchmark compares the plan with "
              "torch.cuda.max_memory_allocated and has nothing to measure on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    manifest = make_data(out / "data")
    common = ["hardware.accelerator=cuda", "model.dtype=bfloat16", "train.precision=bf16",
              f"data.train_manifest={manifest}", "data.eval_manifest=null", f"train.micro_batch={MICRO_BATCH}",
              f"train.effective_batch={MICRO_BATCH}", f"train.max_steps={args.steps}", "train.log_every_steps=1",
              "train.ctc_aux_weight=0", f"data.max_duration={SECONDS + 1}", "train.save_every_steps=1000"]
    rows = []
    for case, overrides in CASES.items():
        for checkpointing in (False, True):
            name = f"{case}, checkpointing {'on' if checkpointing else 'off'}"
            argv = [*common, *overrides, f"train.gradient_checkpointing={str(checkpointing).lower()}"]
            run = out / name.replace(" ", "-").replace(",", "")
            if caspi(["train", "--recipe", str(RECIPE), "--out", str(run), "--quiet", *argv]) != 0:
                raise SystemExit(f"caspi train failed for {name}")
            steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
            measured = max(r["mem_gib"] for r in steps if r.get("kind") == "train")  # GiB
            plan_file = out / f"{run.name}.plan.json"
            with plan_file.open("w", encoding="utf-8") as f:
                sys.stdout, saved = f, sys.stdout
                try:
                    code = caspi(["plan", "--recipe", str(RECIPE), *argv, "--gpu-mem", "80", "--json"])
                finally:
                    sys.stdout = saved
            if code != 0:
                raise SystemExit(f"caspi plan failed for {name}")
            memory = json.loads(plan_file.read_text(encoding="utf-8"))["layout"]["phases"][0]["memory"]
            predicted = (memory["total_bytes"] - memory["terms"]["overhead"]) / 2**30  # GiB
            rows.append((name, predicted, measured, memory["terms"]))
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}; micro-batch {MICRO_BATCH} × {SECONDS:g} s "
          f"clips, bf16\n")
    print("| case | plan (GiB, without the CUDA context) | max_memory_allocated (GiB) | plan / measured |")
    print("|---|---:|---:|---:|")
    for name, predicted, measured, _ in rows:
        print(f"| {name} | {predicted:.3f} | {measured:.3f} | {predicted / measured:.2f} |")
    print("\nplan terms (GiB):")
    for name, _, _, terms in rows:
        print(f"  {name}: " + ", ".join(f"{k} {v / 2**30:.3f}" for k, v in terms.items() if v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
