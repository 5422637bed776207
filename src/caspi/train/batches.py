"""The batches a run trains and evaluates on, from manifest to model inputs.

    cuts = read_train_cuts(recipe, report=True)              # within data.min_duration..max_duration
    for batch, last_of_epoch in epoch_batches(dataset, sampler, seed=..., num_workers=...):
        inputs = model_inputs(batch, family, processor, ...)  # features (SpecAugment applied), labels, frame_lens
        for part in split_rows(inputs, chunks): ...          # after a CUDA OOM, a micro-batch runs in pieces
    subset = eval_subset(recipe, family)                     # the fixed eval clips, loaded once

Exactness on resume needs every random draw to come from saved state: the DataLoader gets its own generator (its
iterator would otherwise draw from the global RNG), and SpecAugment runs in `model_inputs`, in the main process, on
the global torch RNG the checkpoint saves.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet

from caspi.data.cuts import cut_domain, cut_text, read_manifest
from caspi.data.dataset import AsrBatchDataset
from caspi.data.sampling import sampler_from_recipe
from caspi.errors import ConfigError, DataError
from caspi.models.families import ModelFamily
from caspi.train.preempt import ignore_interrupt_in_worker


def read_train_cuts(recipe, report: bool) -> CutSet:
    """The training manifest's cuts within data.min_duration..max_duration (`report`: say how many were skipped)."""
    d = recipe.data
    if not d.train_manifest:
        raise ConfigError("data.train_manifest: required for training")
    if not Path(d.train_manifest).is_file():
        raise DataError(f"{d.train_manifest}: training manifest not found (data.train_manifest)")
    kept, skipped = cuts_within_durations(d.train_manifest, d)
    if skipped and report:
        print(f"caspi: skipping {skipped} cuts outside {d.min_duration}..{d.max_duration} s", file=sys.stderr)
    return kept


def cuts_within_durations(manifest, data) -> tuple[CutSet, int]:
    """(the manifest's cuts within data.min_duration..max_duration, how many lie outside): what training reads, and
    what `caspi plan` counts. DataError when no cut lies within."""
    cuts = read_manifest(manifest)
    kept = cuts.filter(lambda c: data.min_duration <= c.duration <= data.max_duration).to_eager()
    if len(kept) == 0:
        raise DataError(f"{manifest}: no cut lies within data.min_duration..max_duration "
                        f"({data.min_duration}..{data.max_duration} s)")
    return kept, len(cuts) - len(kept)


def count_batches(recipe, cuts: CutSet, *, world_size: int, rank: int) -> int:
    """Micro-batches per epoch for this rank, by a metadata-only pass of a twin sampler (no audio read)."""
    twin = sampler_from_recipe(recipe, cuts, world_size=world_size, rank=rank)
    twin.set_epoch(1)
    return sum(1 for _ in twin)


def epoch_batches(dataset, sampler, *, seed: int, num_workers: int) -> Iterator[tuple[dict, bool]]:
    """The batches the sampler has left this epoch, each with a flag on the last one (the step it ends must
    synchronise gradients)."""
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
        worker_init_fn=ignore_interrupt_in_worker,
    )
    return flag_last(loader)


def flag_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, whether it is the last one) for each item, looking one ahead."""
    it = iter(items)
    try:
        current = next(it)
    except StopIteration:
        return
    for following in it:
        yield current, False
        current = following
    yield current, True


def model_inputs(batch: dict, family: ModelFamily, processor, *, dtype: torch.dtype, language: str | None,
                 spec_augment, ctc_targets: bool) -> dict:
    """Batch from the loader → model inputs (on the CPU): features (B, n_mels, T) with SpecAugment applied (when
    given), labels, plus `frame_lens` (B,) and `ctc_targets` (token ids per transcript; None without the CTC
    head). Built once per micro-batch, so an OOM replay sees the same SpecAugment masks and draws no more random
    numbers."""
    audio, lens = batch["audio"], batch["audio_lens"]  # (B, T_samples), (B,)
    clips = [audio[i, : int(n)].numpy() for i, n in enumerate(lens)]
    inputs = family.build_inputs(processor, clips, batch["texts"], dtype=dtype, language=language)
    feats = inputs["input_features"]  # (B, n_mels, T_mel)
    frame_lens = family.frame_lengths(inputs, lens)  # (B,) mel frames of real audio
    if spec_augment is not None:
        augmented = spec_augment(feats.transpose(1, 2).float(), frame_lens)  # (B, T_mel, n_mels)
        inputs["input_features"] = augmented.transpose(1, 2).to(feats.dtype).contiguous()
    inputs["frame_lens"] = frame_lens
    inputs["ctc_targets"] = (
        processor.tokenizer(batch["texts"], add_special_tokens=False)["input_ids"] if ctc_targets else None
    )
    return inputs


def split_rows(inputs: dict, chunks: int) -> list[dict]:
    """Model inputs split by rows into `chunks` pieces (fewer when the batch has fewer rows); 1: a shallow copy
    of the inputs as they are."""
    if chunks == 1:
        return [dict(inputs)]
    n = inputs["labels"].shape[0]
    bounds = np.linspace(0, n, min(chunks, n) + 1).astype(int)
    return [{k: v[lo:hi] if v is not None else None for k, v in inputs.items()}
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def eval_subset(recipe, family: ModelFamily) -> dict | None:
    """The first `eval.samples` cuts of the eval manifest taken round-robin over domains (sorted by id), so every
    domain is in the subset, loaded once into memory: {"ids", "refs", "domains", "audio"}; None without one."""
    path, n = recipe.data.eval_manifest, recipe.eval.samples
    if not path:
        return None
    by_domain: dict[str, list] = {}
    for cut in sorted(read_manifest(path), key=lambda c: c.id):
        by_domain.setdefault(cut_domain(cut), []).append(cut)
    chosen = []
    queues = [list(v) for _, v in sorted(by_domain.items())]
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    # No augmentation; a clip past the family's window (Whisper: 30 s) fails here, at the start, not at the first eval.
    batch = AsrBatchDataset(for_training_text=False, max_seconds=family.max_audio_seconds)[CutSet.from_cuts(chosen)]
    audio = [batch["audio"][i, : int(length)].numpy() for i, length in enumerate(batch["audio_lens"])]
    return {"ids": batch["ids"], "refs": [cut_text(c) for c in chosen], "domains": batch["domains"], "audio": audio}
