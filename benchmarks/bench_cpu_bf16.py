"""Training steps on the CPU in float32 against bf16 autocast (`train.precision: bf16`, `pick_device`).

Model: the tiny Qwen3-ASR the demo trains (`family.tiny(..., size="s")`: 3 audio layers, 3 LLM layers, ~2.9 M
parameters), float32 weights, every parameter trainable (Round 1's phase), training mode, no checkpointing. A step
is what `caspi train` does per micro-batch: forward with the loss, backward, gradient clipping at 1.0, AdamW step,
`zero_grad(set_to_none=True)`; under bf16 the forward runs in `torch.autocast("cpu", torch.bfloat16)` as the
trainer's `_autocast` does. Batches: `--batch` sine clips of the demo's Round-1 durations (1.5–3.0 s, median 2.2 s)
with Hebrew transcripts, built once by the family's `build_inputs`.

Each round times one step of each variant, alternating which goes first; two models from the same seed (weights
checked equal), each with its own optimizer. Prints the median step seconds and the ratio, and says whether this
CPU computes bf16 natively (`cpu_has_native_bf16`): without AVX512-BF16 or AMX the bf16 kernels are emulated and the
ratio can invert.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_cpu_bf16.py [--batch 16] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from caspi.models.families import get_family
from caspi.testing import tone
from caspi.train.resources import cpu_has_native_bf16

TEXTS = ["שלום עולם", "מה שלומך היום", "הרכבת יוצאת בשמונה", "תודה רבה לכולם", "נתראה מחר בבוקר"]
SECONDS = (1.5, 1.9, 2.0, 2.1, 2.2, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 3.0)  # the demo's Round-1 clips, roughly


def build(batch: int):
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=0, size="s")
    model.train()
    audio = [tone(SECONDS[i % len(SECONDS)], freq=220.0 + 40 * i) for i in range(batch)]
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    inputs = family.build_inputs(processor, audio, texts, dtype=torch.float32, language="Hebrew")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, optimizer, inputs


def step_seconds(model, optimizer, inputs: dict, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    loss.float().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {"float32": False, "bf16 autocast": True}
    runs = {name: build(args.batch) for name in variants}
    first, second = (dict(m.named_parameters()) for m, _, _ in runs.values())
    assert all(torch.equal(first[n], second[n]) for n in first), "the two models must start from the same weights"
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, bf16 in variants.items():  # one warm-up step each
        step_seconds(*runs[name], bf16)
    for i in range(args.repeats):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(step_seconds(*runs[name], variants[name]))
    audio_s = sum(SECONDS[i % len(SECONDS)] for i in range(args.batch))
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16 on this CPU: {cpu_has_native_bf16()}; "
          f"batch {args.batch} clips ({audio_s:.1f} s of audio), {args.repeats} rounds")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"  {name:14s} median step {median * 1000:6.1f} ms  ({args.batch / median:5.1f} clips/s)")
    print(f"  bf16 / float32 step time: {medians['bf16 autocast'] / medians['float32']:.2f}")


if __name__ == "__main__":
    main()
