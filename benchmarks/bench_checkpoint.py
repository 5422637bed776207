"""Checkpoint size and save time of `caspi.train.checkpoint.save_checkpoint` against the trainable state it holds.

Model: the tiny Qwen3-ASR of the real architecture (`family.tiny(..., size="s")` by default). Two trainable sets:
a Strategy-B-like subset (projector, the top 2 LLM layers, the LM head: tied, so the input embeddings) and every
parameter (full fine-tune). Each gets an AdamW built as the loop builds it (`optimizer_param_groups`, weight decay
0.01) and 2 optimizer steps on random audio with Hebrew transcripts, so its `exp_avg`/`exp_avg_sq`/`step` exist.
The snapshot is built as `caspi.train.state.snapshot` builds it: the trainable parameters by name, the optimizer's
state_dict, and a rank state of every RNG, the real sampler state of a duration-bucketed sampler, no partial grads.

Figures, per trainable set:
- trainable-state bytes: Σ numel × element size over the trainable parameters × 3 (weights, exp_avg,
  exp_avg_sq), plus the per-parameter `step` scalars; checkpoint bytes: the files in the checkpoint folder.
  Ratio checkpoint / trainable state, target ≤ 1.05.
- save time (mean, median and min over `--saves` saves, each a new step, keep_last 2 so pruning runs as in training)
  against a bare `torch.save` of the same three objects into one file (no fsync, no atomic rename), and against
  that bare save plus one fsync (the least a durable save costs).

    .venv/bin/python benchmarks/bench_checkpoint.py [--size s] [--saves 10] [--top 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from caspi.data.audio import SAMPLE_RATE
from caspi.data.sampling import make_sampler, sampler_state
from caspi.models.families import get_family
from caspi.models.unfreeze import apply_trainable, optimizer_param_groups, trainable_names
from caspi.testing import metadata_cut
from caspi.train import checkpoint as ckpt

TARGET = 1.05  # checkpoint bytes / trainable-state bytes must stay at or below this
TEXTS = ["שלום עולם", "מה שלומך היום", "הרכבת יוצאת בשמונה", "תודה רבה לכולם", "נתראה מחר בבוקר"]


def trained_model(size: str, spec: dict, steps: int, seed: int = 0):
    """(model, optimizer, trainable names) after `steps` AdamW steps on random audio with Hebrew texts."""
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=seed, size=size, audio_init="he")
    groups = trainable_names(model, spec)
    apply_trainable(model, groups)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, groups, 1e-3, weight_decay=0.01), lr=1e-3,
                                  weight_decay=0.01)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        audio = [0.1 * rng.standard_normal(int(rng.uniform(1.0, 2.0) * SAMPLE_RATE)).astype(np.float32)
                 for _ in TEXTS]  # (T,) each, 1-2 s
        inputs = family.build_inputs(processor, audio, TEXTS, dtype=torch.float32)
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    names = {n for group in groups.values() for n in group}
    return model, optimizer, names


def rank_state() -> dict:
    """What `caspi.train.state.snapshot` puts in rank-0.pt at a step boundary: RNGs, the sampler position, no grads."""
    cuts = [metadata_cut(f"c{i:04d}", 1 + i % 10) for i in range(500)]
    from lhotse import CutSet

    sampler = make_sampler(CutSet.from_cuts(cuts), max_cuts=16, num_buckets=30, seed=0)
    sampler.set_epoch(1)
    consumed = 0
    for consumed, _ in enumerate(sampler, start=1):  # metadata only
        if consumed == 7:
            break
    return {
        "rng": ckpt.capture_rng(),
        "sampler": sampler_state(sampler, consumed),
        "grads": {},
        "pending_loss": torch.zeros(3),
    }


def snapshot(model, optimizer, names: set[str], step: int, rank: dict) -> ckpt.Snapshot:
    params = dict(model.named_parameters())
    state = {"step": step, "epoch": 1, "micro": 0, "consumed": 7, "phase": "B", "phase_start_step": 0, "chunks": 1,
             "bad_steps": 0, "best": None, "last_loss": 1.0, "trained": sorted(names), "metrics_offset": 0,
             "wandb_id": None, "fingerprint": "0" * 64, "base": {"path": "base", "family": "qwen3_asr"}}
    return ckpt.Snapshot(state=state, weights={n: params[n] for n in sorted(names)},
                         optimizer=optimizer.state_dict(), rank_state=rank)


def state_bytes(model, optimizer, names: set[str]) -> int:
    """Σ numel × element size of the trainable parameters × 3 (weight, exp_avg, exp_avg_sq) + the `step`s."""
    params = dict(model.named_parameters())
    weights = sum(params[n].numel() * params[n].element_size() for n in names)
    steps = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    return 3 * weights + steps


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(label: str, size: str, spec: dict, saves: int, steps: int, root: Path) -> dict:
    model, optimizer, names = trained_model(size, spec, steps)
    rank = rank_state()
    expected = state_bytes(model, optimizer, names)
    ckpt_root = root / label / "checkpoints"
    save_ms, bare_ms, fsync_ms = [], [], []
    folder = None
    for i in range(saves):
        snap = snapshot(model, optimizer, names, step=100 * (i + 1), rank=rank)
        started = time.perf_counter()
        folder = ckpt.save_checkpoint(ckpt_root, snap, keep_last=2)
        save_ms.append(1000 * (time.perf_counter() - started))
        # Baseline: the same three objects in one torch.save, no safetensors, no fsync, no rename.
        snap = snapshot(model, optimizer, names, step=100 * (i + 1), rank=rank)
        bare = root / label / f"bare-{i}.pt"
        started = time.perf_counter()
        torch.save({"weights": snap.weights, "optimizer": snap.optimizer, "rank": snap.rank_state}, bare)
        bare_ms.append(1000 * (time.perf_counter() - started))
        # Second baseline: the same plus one fsync, the least a save that survives a power cut costs.
        bare = root / label / f"bare-fsync-{i}.pt"
        started = time.perf_counter()
        torch.save({"weights": snap.weights, "optimizer": snap.optimizer, "rank": snap.rank_state}, bare)
        with open(bare, "rb") as f:
            os.fsync(f.fileno())
        fsync_ms.append(1000 * (time.perf_counter() - started))
    assert folder is not None
    kept = [p.name for p in ckpt.list_checkpoints(ckpt_root)]
    assert len(kept) == min(2, saves), kept  # pruning ran
    loaded = ckpt.load_checkpoint(folder)
    assert loaded.weights.keys() == set(names)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    total = sum(p.numel() for p in model.parameters())
    return {
        "label": label, "trainable": sum(dict(model.named_parameters())[n].numel() for n in names), "total": total,
        "state": expected, "ckpt": folder_bytes(folder), "files": files,
        "bare_bytes": (root / label / "bare-0.pt").stat().st_size,
        "save": timing(save_ms), "bare": timing(bare_ms), "fsync": timing(fsync_ms),
    }


def timing(ms: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(ms), "median": statistics.median(ms), "min": min(ms)}


def fmt(t: dict[str, float]) -> str:
    return f"{t['mean']:.1f}/{t['median']:.1f}/{t['min']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["xs", "s"], default="s", help="tiny Qwen3-ASR size")
    parser.add_argument("--saves", type=int, default=10, help="checkpoints written per trainable set")
    parser.add_argument("--top", type=int, default=2, help="LLM layers trained in the subset (llm_top)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps before saving (AdamW state)")
    parser.add_argument("--dir", default=None, help="write checkpoints under this folder (default: a temp dir)")
    args = parser.parse_args()

    torch.manual_seed(0)
    specs = {
        f"subset (projector, llm_top {args.top}, lm_head)": {"projector": {}, "llm_top": {"top": args.top},
                                                             "lm_head": {}},
        "all parameters (full fine-tune)": {"all": {}},
    }
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-ckpt-") as tmp:
        for i, (label, spec) in enumerate(specs.items()):
            rows.append(measure(f"set{i}", args.size, spec, args.saves, args.steps, Path(tmp)))
            rows[-1]["label"] = label

    print(f"tiny Qwen3-ASR '{args.size}', AdamW after {args.steps} steps, {args.saves} saves per row (keep_last 2)")
    print(f"{'trainable set':<40} {'trainable/total params':>22} {'state MB':>9} {'ckpt MB':>9} {'ratio':>7}")
    for r in rows:
        params = f"{r['trainable']:,}/{r['total']:,}"
        print(f"{r['label']:<40} {params:>22} {r['state'] / 1e6:>9.3f} {r['ckpt'] / 1e6:>9.3f} "
              f"{r['ckpt'] / r['state']:>7.4f}")
    print(f"\n{'save time, ms mean/median/min':<40} {'save_checkpoint':>17} {'bare torch.save':>17} "
          f"{'+ fsync':>17} {'save/bare':>10} {'save/(+fsync)':>14}")
    for r in rows:
        save, bare, fsync = r["save"]["median"], r["bare"]["median"], r["fsync"]["median"]
        print(f"{r['label']:<40} {fmt(r['save']):>17} {fmt(r['bare']):>17} {fmt(r['fsync']):>17} "
              f"{save / bare:>9.2f}x {save / fsync:>13.2f}x")
    print("(save/bare ratios on medians: a single fsync stalled by other disk traffic moves a mean by 2x)")
    for r in rows:
        extra = r["ckpt"] - r["state"]
        print(f"  {r['label']}: files " + ", ".join(f"{k} {v:,} B" for k, v in r["files"].items())
              + f"; {extra:,} B beyond the state; bare torch.save file {r['bare_bytes']:,} B")
    worst = max(r["ckpt"] / r["state"] for r in rows)
    print(f"worst ratio checkpoint / trainable state: {worst:.4f}; target <= {TARGET}: "
          f"{'PASS' if worst <= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
