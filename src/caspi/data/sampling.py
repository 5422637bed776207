"""Training-batch sampling: duration-bucketed micro-batches, distributed across ranks, resumable exactly.

`make_sampler` builds Lhotse's `DynamicBucketingSampler`. It groups cuts of similar duration using manifest metadata
only (no audio I/O, so sampling never waits on disk) and sizes each micro-batch in seconds of audio, counting padding
the way Lhotse does (batch size × longest cut), optionally capped at `max_cuts`: bucketing pads ~4 % where random
batches pad ~40 % (benchmarks/bench_padding.py). It is distributed-aware through explicit `world_size`/`rank`, so it
needs no initialised process group. `sampler_state` / `restore_sampler` save and restore the sampler for exact resume
(Lhotse replays the epoch's batch selection from metadata up to the saved point). `sampler_from_recipe` is the
training loop's entry: batch size and bucketing come from the recipe's YAML, never from code.

The sampler yields `CutSet`s; `caspi.data.dataset.AsrBatchDataset` turns each into a batch of audio and text.
Typical wiring::

    sampler = make_sampler(cuts, max_cuts=8, max_duration=120.0, world_size=ws, rank=rank, seed=seed)
    dataset = AsrBatchDataset(speed_factors=[0.9, 1.0, 1.1], seed=seed)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=2)
    if resuming:
        restore_sampler(sampler, checkpoint["sampler"])   # sampler.epoch is now the saved epoch
    for epoch in range(sampler.epoch, num_epochs):        # set_epoch(other epoch) would discard the restore
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)   # before iter(loader): workers get a copy of the dataset at that moment
        for batch in loader:
            ...
            done_in_epoch += 1   # the loop's own count (saved in the checkpoint; 0 at each new epoch)
            checkpoint["sampler"] = sampler_state(sampler, batches_consumed=done_in_epoch)
"""

from __future__ import annotations

import copy
import random
import warnings
from itertools import islice
from typing import Any

from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

from caspi.data.checks import is_int, is_positive_number
from caspi.errors import CheckpointError, ConfigError, DataError

# DynamicBucketingSampler only shuffles inside its buffer of cuts; Lhotse's default buffer is 20,000 cuts. For an
# in-memory CutSet we hold the whole set in the buffer (global shuffling, buckets estimated from every cut) up to
# this many cuts: each batch scans every bucket, so sampling costs O(buffer) per batch and beyond this the
# per-epoch sampling time (and the replay on resume) grows too large. Larger sets are shuffled once up front.
_MAX_BUFFER_CUTS = 100_000
_LHOTSE_DEFAULT_BUFFER = 20_000
_LAZY_BINS_ESTIMATE = 10_000  # cuts Lhotse reads from a lazy CutSet to estimate bucket bins




def _effective_duration(duration: float, quadratic_duration: float | None) -> float:
    """A cut's duration as Lhotse's `TimeConstraint` counts it (seconds), with the optional quadratic penalty."""
    if quadratic_duration is None:
        return duration
    return duration + duration**2 / quadratic_duration


def make_sampler(
    cuts: CutSet,
    *,
    max_cuts: int | None,
    max_duration: float | None = None,
    num_buckets: int = 30,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    world_size: int = 1,
    rank: int = 0,
    quadratic_duration: float | None = None,
) -> DynamicBucketingSampler:
    """A duration-bucketed, distributed-aware, resumable sampler of micro-batches (each a `CutSet`).

    Args:
        cuts: the training cuts. An in-memory (eager) CutSet gets global shuffling (up to 100,000 cuts) and
            bucket bins estimated from every cut, and is checked for cuts longer than `max_duration`; a lazy one
            streams through Lhotse's buffer of 20,000 cuts (shuffling only within it) and is not checked.
        max_cuts: most cuts in one micro-batch (the recipe's micro-batch), or None for no cap.
        max_duration: most seconds of audio in one micro-batch *including padding* (batch size × longest cut),
            or None to size batches by `max_cuts` only. At least one of the two must be set. Lhotse checks the
            limit before adding each cut, so the last cut (from the same duration bucket) can overshoot it
            slightly: at most +2.3 % measured on 1-15 s clips. Speed perturbation below 1.0 lengthens audio
            after sampling: a batch can then hold up to `max_duration / min(factor)` seconds.
        num_buckets: duration buckets (icefall uses 30); reduced to the number of cuts for tiny sets.
        shuffle: shuffle within buckets and the bucket order, differently each epoch (`sampler.set_epoch(e)`).
        seed: the shuffling seed; the same on every rank (an int: "randomized"/"trng" would break resume).
        drop_last: drop the incomplete batches at the end of an epoch.
        world_size, rank: data-parallel layout; each rank receives every `world_size`-th batch, and all ranks get
            the same number of batches (Lhotse redistributes the tail).
        quadratic_duration: Lhotse's penalty for attention cost, seconds (15–40 for transformers): a cut counts
            as `d + d²/quadratic_duration` towards `max_duration`.

    Raises `ConfigError` listing every invalid argument, or when a cut alone exceeds `max_duration` (it would
    make an over-budget batch of one), and `DataError` for an empty CutSet.
    """
    problems = []
    if not isinstance(cuts, CutSet):
        problems.append(f"cuts: expected a lhotse CutSet, got {type(cuts).__name__}")
    if max_cuts is not None and not (is_int(max_cuts) and max_cuts >= 1):
        problems.append(f"max_cuts: expected an integer >= 1 or None, got {max_cuts!r}")
    if max_duration is not None and not is_positive_number(max_duration):
        problems.append(f"max_duration: expected seconds > 0 or None, got {max_duration!r}")
    if max_cuts is None and max_duration is None:
        problems.append("max_cuts and max_duration are both None: set at least one to bound the batch size")
    if not (is_int(num_buckets) and num_buckets >= 1):
        problems.append(f"num_buckets: expected an integer >= 1, got {num_buckets!r}")
    if not is_int(seed):
        problems.append(f"seed: expected an integer (needed for exact resume), got {seed!r}")
    if not (is_int(world_size) and world_size >= 1):
        problems.append(f"world_size: expected an integer >= 1, got {world_size!r}")
    elif not (is_int(rank) and 0 <= rank < world_size):
        problems.append(f"rank: expected an integer in [0, {world_size - 1}], got {rank!r}")
    if quadratic_duration is not None and not is_positive_number(quadratic_duration):
        problems.append(f"quadratic_duration: expected seconds > 0 or None, got {quadratic_duration!r}")
    if problems:
        raise ConfigError("invalid batch sampler settings", problems=problems)

    kwargs: dict[str, Any] = {}
    if not cuts.is_lazy:
        if len(cuts) == 0:
            raise DataError("cannot build a batch sampler over an empty CutSet")
        longest = max(cuts, key=lambda c: c.duration)
        if max_duration is not None and _effective_duration(longest.duration, quadratic_duration) > max_duration:
            raise ConfigError(
                f"cut {longest.id} is {longest.duration:.2f} s, more than max_duration={max_duration} s"
                + (f" with quadratic_duration={quadratic_duration}" if quadratic_duration else "")
                + ": raise max_duration or filter out long cuts"
            )
        if shuffle and len(cuts) > _MAX_BUFFER_CUTS:
            # The buffer cannot hold everything: shuffle the order once (seeded, so a rebuilt sampler sees the
            # same order on resume) so that a manifest sorted by source or domain is not read in that order.
            cuts = cuts.shuffle(rng=random.Random(seed))
        kwargs["buffer_size"] = max(_LHOTSE_DEFAULT_BUFFER, min(len(cuts), _MAX_BUFFER_CUTS))
    # Bucket bins from the first cuts (every cut of an in-memory set up to the buffer size; Lhotse's 10,000 for a
    # lazy one) with Lhotse's estimator. It needs 2 <= num_buckets <= cuts seen and can return no bins for tiny
    # sets, which Lhotse then cannot iterate: one bin above every cut seen makes a single bucket.
    sample = list(islice(cuts, _MAX_BUFFER_CUTS if not cuts.is_lazy else _LAZY_BINS_ESTIMATE))
    if not sample:
        raise DataError("cannot build a batch sampler over an empty CutSet")
    usable_buckets = min(num_buckets, len(sample))
    bins = estimate_duration_buckets(sample, num_buckets=usable_buckets) if usable_buckets > 1 else []
    kwargs["duration_bins"] = bins or [max(c.duration for c in sample) + 1.0]

    with warnings.catch_warnings():
        # Lhotse warns that an eager CutSet brings no memory benefit: true, and fine (manifests fit in memory).
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        return DynamicBucketingSampler(
            cuts,
            max_duration=max_duration,
            max_cuts=max_cuts,
            num_buckets=num_buckets,
            shuffle=shuffle,
            drop_last=drop_last,
            quadratic_duration=quadratic_duration,
            world_size=world_size,
            rank=rank,
            seed=seed,
            # Lhotse's bucket-sync path: the `world_size` batches of one step come from the same bucket, so
            # ranks get similar-length batches. Kept on with one rank too: the unsynced path in lhotse 1.33
            # tests `if queue` (always true) and can pick an empty bucket at the end of an epoch, ending it
            # early and silently dropping ~15 % of the cuts (measured on 500 cuts of 1-15 s).
            sync_buckets=True,
            **kwargs,
        )


def sampler_state(sampler: DynamicBucketingSampler, batches_consumed: int | None = None) -> dict:
    """The sampler's state for a checkpoint, positioned after `batches_consumed` batches of the current epoch.

    A `DataLoader` with `num_workers > 0` draws batches from the sampler ahead of the training loop (prefetch), so
    `sampler.state_dict()` alone would skip the prefetched batches on resume. Pass the number of batches the loop
    has actually consumed in this epoch (None: trust the sampler, right when `num_workers == 0`). Lhotse restores
    by replaying the epoch's batch selection up to that count (metadata only, no audio), which this rewrites.
    """
    state = sampler.state_dict()
    diagnostics = state["diagnostics"]
    stats = diagnostics["stats_per_epoch"][diagnostics["current_epoch"]]
    drawn = stats["kept_batches"]
    if batches_consumed is None:
        batches_consumed = drawn
    if not (is_int(batches_consumed) and 0 <= batches_consumed <= drawn):
        raise CheckpointError(
            f"batches_consumed={batches_consumed!r} is impossible: the sampler has yielded {drawn} batches in "
            f"epoch {diagnostics['current_epoch']}"
        )
    # Lhotse fast-forwards by `kept_batches + discarded_batches` calls to next(); discarded batches only happen
    # at the end of an epoch with drop_last, and counting them would overrun the epoch on replay.
    stats["kept_batches"] = int(batches_consumed)
    stats["discarded_batches"] = 0
    return state


def restore_sampler(sampler: DynamicBucketingSampler, state: dict) -> None:
    """Load `state` (from `sampler_state`) into a sampler built the same way; its next batch is the saved one.

    Raises `CheckpointError` when the state does not fit the sampler: other batch settings (Lhotse would
    silently adopt the saved ones), world size or seed, or more batches than the epoch has (another manifest).
    """
    changed = [
        f"{key}: saved {state.get(key)!r}, now {getattr(sampler, key)!r}"
        for key in ("max_duration", "max_cuts", "quadratic_duration")
        if state.get(key) != getattr(sampler, key)
    ]
    if changed:
        raise CheckpointError(
            "sampler state was saved with other batch settings (exact resume needs the same): "
            + "; ".join(changed)
        )
    try:
        # Lhotse pops keys from the dict it is given: keep the caller's (the checkpoint's) copy intact.
        sampler.load_state_dict(copy.deepcopy(state))
    except AssertionError as exc:
        raise CheckpointError(
            f"sampler state does not match this sampler (world_size {sampler.world_size}, seed {sampler.seed}; "
            f"saved world_size {state.get('world_size')}, seed {state.get('seed')}): {exc}"
        ) from None
    except (KeyError, StopIteration, RuntimeError) as exc:
        # RuntimeError: a StopIteration raised inside Lhotse's replay generator surfaces as RuntimeError.
        raise CheckpointError(
            f"cannot restore the sampler: the saved position does not exist in this data ({type(exc).__name__}: "
            f"{exc}); was the checkpoint made with another manifest or batch settings?"
        ) from None


def sampler_from_recipe(recipe, cuts: CutSet, *, world_size: int = 1, rank: int = 0) -> DynamicBucketingSampler:
    """The training sampler: `train.micro_batch` cuts per micro-batch at most, `train.max_batch_duration` seconds
    of padded audio at most (no cap when unset), `train.num_buckets` duration buckets, seeded by `train.seed`.
    `recipe` is the typed recipe (duck-typed here: data does not import config)."""
    t = recipe.train
    return make_sampler(
        cuts,
        max_cuts=t.micro_batch,
        max_duration=t.max_batch_duration,
        num_buckets=t.num_buckets,
        shuffle=True,
        seed=t.seed,
        world_size=world_size,
        rank=rank,
    )
