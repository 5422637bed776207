"""Gradient checkpointing with and without transformers' input-grad hooks: step time, activations, gradients.

transformers' `activation_checkpointing_enable` calls `enable_input_require_grads`, which hooks every input
embedding so its output requires grad (Qwen3-ASR: the audio tower's `conv2d1` and the text embeddings). Reentrant
checkpointing needs that; the non-reentrant checkpointing Caspi uses does not, and with the hooks on autograd
records and back-propagates through every frozen layer after them. `ModelFamily.enable_gradient_checkpointing`
removes the hooks ("hooks removed", the product); "hooks on" calls `base_model(model).enable_input_require_grads()`
after it, which is transformers' own behaviour.

Model: the tiny Qwen3-ASR of the real architecture (`family.tiny(..., size="s")`, the size the demo trains: 3 audio
layers, 3 LLM layers, ~2.9 M parameters), float32 on the CPU, training mode, checkpointing on. Two trainable sets,
resolved and applied with `caspi.models.unfreeze.trainable_names` / `apply_trainable`:
- Strategy B: projector + top 2 LLM layers + LM head (tied: the text embeddings). No audio layer trains.
- Strategy A: the same + the top 2 audio layers (the conv front end and audio layer 0 stay frozen).
Each variant is its own model built from the same seed (the weights are checked equal), on one batch of `--batch`
sine clips of `--seconds` s with Hebrew transcripts.

Figures, per trainable set and variant:
- step seconds: one forward + loss + backward + `zero_grad(set_to_none=True)`, median over `--repeats` rounds
  after one warm-up step each; the variants alternate within a round and which goes first alternates by round.
- activation bytes alive after forward: every tensor autograd saves (saved-tensor hooks outside the checkpointed
  layers) and every checkpointed layer's input, recorded as weak references and counted, once per storage, if
  still alive once forward has returned the loss (parameters and the batch's own tensors excluded); the share
  recorded while the audio tower ran is shown apart.
- autograd nodes: the nodes of the loss's backward graph.
- gradients: max |Δ| between the variants over every trainable parameter's gradient (must be 0: the fix must not
  change training), and that no frozen parameter got a gradient.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_checkpointing.py [--batch 8] [--seconds 8] [--repeats 15]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch

from caspi.models.families import base_model, get_family
from caspi.models.unfreeze import apply_trainable, trainable_names
from caspi.testing import tone

TEXTS = ["שלום עולם", "מה שלומך היום", "הרכבת יוצאת בשמונה", "תודה רבה לכולם", "נתראה מחר בבוקר"]
STRATEGY_B = {"projector": {}, "llm_top": {"top": 2}, "lm_head": {}}
STRATEGIES = {
    "B: projector + llm_top 2 + lm_head": STRATEGY_B,
    "A: B + audio_top 2": {"audio_top": {"top": 2}, **STRATEGY_B},
}
VARIANTS = ("hooks removed", "hooks on")


def build(spec: dict, hooks_on: bool, size: str):
    """(model, processor) in training mode with `spec` trainable and the family's gradient checkpointing on; with
    `hooks_on`, transformers' input-grad hooks put back."""
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=0, size=size)
    apply_trainable(model, trainable_names(model, spec))
    family.enable_gradient_checkpointing(model)
    if hooks_on:
        base_model(model).enable_input_require_grads()
    model.train()
    return model, processor


def step_seconds(model, inputs: dict) -> float:
    start = time.perf_counter()
    model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def graph_nodes(loss: torch.Tensor) -> int:
    """Nodes of the backward graph reachable from `loss`."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return len(seen)


def activations_after_forward(model, inputs: dict) -> tuple[int, int, int]:
    """(bytes alive after forward, of which recorded inside the audio tower, autograd nodes) for one forward."""
    base = base_model(model).model
    excluded = {p.untyped_storage().data_ptr() for p in model.parameters()}
    excluded |= {t.untyped_storage().data_ptr() for t in inputs.values()}
    recorded: dict[int, tuple[int, bool, list[weakref.ref]]] = {}  # storage → (bytes, in audio tower, refs)
    in_audio = [False]

    def record(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in excluded:
            return
        if ptr not in recorded or all(ref() is None for ref in recorded[ptr][2]):
            # New, or the allocator reused a freed storage's address: a new storage.
            recorded[ptr] = (storage.nbytes(), in_audio[0], [])
        recorded[ptr][2].append(weakref.ref(t))

    def pack(t):
        record(t)
        return t

    def layer_input(module, args, kwargs):
        # Non-reentrant checkpointing keeps a layer's inputs for the recompute only while a graph node needs them;
        # the weak reference tells whether one did.
        record(args[0] if args else kwargs["hidden_states"])

    handles = [layer.register_forward_pre_hook(layer_input, with_kwargs=True)
               for layer in [*base.audio_tower.layers, *base.language_model.layers]]
    handles.append(base.audio_tower.register_forward_pre_hook(lambda m, a: in_audio.__setitem__(0, True)))
    handles.append(base.audio_tower.register_forward_hook(lambda m, a, o: in_audio.__setitem__(0, False)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**inputs).loss  # the output (logits included) is dropped: only what the graph holds stays
        alive = [(n, audio) for n, audio, refs in recorded.values() if any(ref() is not None for ref in refs)]
        nodes = graph_nodes(loss)
    finally:
        for handle in handles:
            handle.remove()
    del loss
    return sum(n for n, _ in alive), sum(n for n, audio in alive if audio), nodes


def trainable_grads(model, inputs: dict) -> tuple[dict[str, torch.Tensor], int]:
    """{name: gradient} of the trainable parameters after one backward, and how many frozen ones got a gradient."""
    model(**inputs).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen_with_grad = sum(p.grad is not None for p in model.parameters() if not p.requires_grad)
    model.zero_grad(set_to_none=True)
    return grads, frozen_with_grad


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds; each times both variants once")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="s")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for label, spec in STRATEGIES.items():
        models = {v: build(spec, v == "hooks on", args.size) for v in VARIANTS}
        (model_a, processor), (model_b, _) = models["hooks removed"], models["hooks on"]
        state_a, state_b = model_a.state_dict(), model_b.state_dict()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), "the variants must start from equal weights"
        audio = [tone(args.seconds, 200.0 + 150.0 * i) for i in range(args.batch)]  # (T,) float32 each
        texts = [TEXTS[i % len(TEXTS)] for i in range(args.batch)]
        inputs = get_family("qwen3_asr").build_inputs(processor, audio, texts, dtype=torch.float32)
        trainable = sum(p.numel() for p in model_a.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model_a.parameters())

        grads, frozen_with_grad = {}, {}
        for v, (model, _) in models.items():
            grads[v], frozen_with_grad[v] = trainable_grads(model, inputs)  # also the warm-up step
        max_diff = max((grads["hooks removed"][n] - grads["hooks on"][n]).abs().max().item() for n in grads["hooks on"])
        memory = {v: activations_after_forward(m, inputs) for v, (m, _) in models.items()}

        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                times[v].append(step_seconds(models[v][0], inputs))
        rows.append((label, trainable, total, times, memory, max_diff, frozen_with_grad))

    print(f"tiny Qwen3-ASR {args.size!r}, float32 CPU, {torch.get_num_threads()} threads, gradient checkpointing "
          f"(non-reentrant), batch {args.batch} x {args.seconds:g} s, LLM sequence {inputs['input_ids'].shape[1]} "
          f"tokens, {args.repeats} interleaved rounds")
    print()
    print("| trainable set | trainable / total | variant | step s (median; min–max) | activations MiB "
          "(audio tower) | autograd nodes | max abs Δ grad | frozen params with grad |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for label, trainable, total, times, memory, max_diff, frozen in rows:
        for v in VARIANTS:
            t, (act, act_audio, nodes) = times[v], memory[v]
            print(f"| {label} | {trainable:,} / {total:,} | {v} | {statistics.median(t):.3f} "
                  f"({min(t):.3f}–{max(t):.3f}) | {mib(act)} ({mib(act_audio)}) | {nodes} | "
                  f"{max_diff:.1e} | {frozen[v]} |")
    print()
    print("| trainable set | step time removed / on | activations removed / on | autograd nodes removed / on | "
          "paired step ratio (median of rounds) |")
    print("|---|---:|---:|---:|---:|")
    for label, _, _, times, memory, _, _ in rows:
        off, on = times["hooks removed"], times["hooks on"]
        paired = statistics.median(a / b for a, b in zip(off, on))
        print(f"| {label} | {statistics.median(off) / statistics.median(on):.2f}x | "
              f"{memory['hooks removed'][0] / memory['hooks on'][0]:.2f}x | "
              f"{memory['hooks removed'][2] / memory['hooks on'][2]:.2f}x | {paired:.2f}x |")
    identical = all(row[5] == 0.0 and not any(row[6].values()) for row in rows)
    print()
    print(f"gradients of the trainable parameters identical in both variants, no frozen parameter with a gradient: "
          f"{'PASS' if identical else 'FAIL'}")


if __name__ == "__main__":
    main()
