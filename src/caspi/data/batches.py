"""Batches for training: duration-bucketed sampling, exact resume, speed perturbation, SpecAugment, collation.

The pieces, in the order a batch meets them:

1. `make_sampler` builds Lhotse's `DynamicBucketingSampler`. It groups cuts of similar duration using manifest
   metadata only (no audio I/O) and sizes each micro-batch in seconds of audio, counting padding the way Lhotse
   does (batch size × longest cut), optionally capped at `max_cuts`. It is distributed-aware through explicit
   `world_size`/`rank`, so it needs no initialised process group.
2. `sampler_state` / `restore_sampler` save and restore the sampler for exact resume (Lhotse replays the epoch's
   batch selection from metadata up to the saved point).
3. `AsrBatchDataset` (Lhotse style: `dataset[cuts] -> dict`) loads audio through `caspi.data.cuts.load_cut_audio`
   (the loader import, audit and eval use: 16 kHz, channels averaged, NaN/inf refused naming the cut), applies
   speed perturbation chosen by `speed_factor(cut_id, factors, seed, epoch)` (a pure function, so a resumed run
   makes the same choices) unless it would stretch the clip past the model's window, and zero-pads the batch.
   Feature extraction is model-family specific and is the optional `transform`. `check_targets` refuses a
   training set with empty transcripts before any model work.
4. `make_spec_augment` builds SpecAugment for feature batches (B, T, F), applied in the training process in
   train mode only.

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
import hashlib
import math
import random
import warnings
from collections.abc import Callable, Sequence
from itertools import islice
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.dataset.signal_transforms import mask_along_axis_optimized, time_warp

from caspi.data.audio import SAMPLE_RATE
from caspi.data.cuts import cut_domain, cut_text, load_cut_audio
from caspi.data.text import for_training
from caspi.errors import AudioError, CheckpointError, ConfigError, DataError

DEFAULT_SPEED_FACTORS = (0.9, 1.0, 1.1)  # REFERENCE.md "Data pipeline conventions"

# DynamicBucketingSampler only shuffles inside its buffer of cuts; Lhotse's default buffer is 20,000 cuts. For an
# in-memory CutSet we hold the whole set in the buffer (global shuffling, buckets estimated from every cut) up to
# this many cuts: each batch scans every bucket, so sampling costs O(buffer) per batch and beyond this the
# per-epoch sampling time (and the replay on resume) grows too large. Larger sets are shuffled once up front.
_MAX_BUFFER_CUTS = 100_000
_LHOTSE_DEFAULT_BUFFER = 20_000
_LAZY_BINS_ESTIMATE = 10_000  # cuts Lhotse reads from a lazy CutSet to estimate bucket bins


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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
    if max_cuts is not None and not (_is_int(max_cuts) and max_cuts >= 1):
        problems.append(f"max_cuts: expected an integer >= 1 or None, got {max_cuts!r}")
    if max_duration is not None and not _is_positive_number(max_duration):
        problems.append(f"max_duration: expected seconds > 0 or None, got {max_duration!r}")
    if max_cuts is None and max_duration is None:
        problems.append("max_cuts and max_duration are both None: set at least one to bound the batch size")
    if not (_is_int(num_buckets) and num_buckets >= 1):
        problems.append(f"num_buckets: expected an integer >= 1, got {num_buckets!r}")
    if not _is_int(seed):
        problems.append(f"seed: expected an integer (needed for exact resume), got {seed!r}")
    if not (_is_int(world_size) and world_size >= 1):
        problems.append(f"world_size: expected an integer >= 1, got {world_size!r}")
    elif not (_is_int(rank) and 0 <= rank < world_size):
        problems.append(f"rank: expected an integer in [0, {world_size - 1}], got {rank!r}")
    if quadratic_duration is not None and not _is_positive_number(quadratic_duration):
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
    if not (_is_int(batches_consumed) and 0 <= batches_consumed <= drawn):
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


def check_speed_factors(factors: Sequence[float]) -> tuple[float, ...]:
    """Validate speed perturbation factors (each finite and > 0; non-empty) and return them as a tuple."""
    values = tuple(factors)
    bad = [f for f in values if not _is_positive_number(f)]
    if not values or bad:
        raise ConfigError(f"speed_factors: expected a non-empty list of numbers > 0, got {list(values)!r}")
    return tuple(float(f) for f in values)


def speed_factor(cut_id: str, factors: Sequence[float], seed: int, epoch: int) -> float:
    """The speed factor for one cut in one epoch: a pure function of (seed, epoch, cut id), uniform over `factors`.

    A keyed hash rather than a global RNG, so the choice does not depend on which worker loads the cut or on how
    many batches came before it, and an exactly resumed run makes the same choices.
    """
    digest = hashlib.blake2b(f"{seed}\x00{epoch}\x00{cut_id}".encode(), digest_size=8).digest()
    return factors[int.from_bytes(digest, "little") % len(factors)]


class AsrBatchDataset(torch.utils.data.Dataset):
    """Lhotse-style map dataset: `dataset[cuts]` loads and collates one micro-batch chosen by the sampler.

    Returns a dict:
        ids: list[str], the original cut ids (before speed perturbation renames them)
        audio: FloatTensor (B, T), 16 kHz mono, zero-padded on the right
        audio_lens: LongTensor (B,), samples of real audio per row
        texts: list[str], `for_training(transcript)` (or the raw transcript with `for_training_text=False`)
        domains: list[str]
        durations: list[float], seconds of the audio as loaded (after speed perturbation)
    and then whatever `transform(batch)` makes of it (feature extraction, tokenisation).

    Speed perturbation (`speed_factors`, e.g. [0.9, 1.0, 1.1]) uses Lhotse's `cut.perturb_speed` (resampling
    with scipy); the factor is `speed_factor(cut id, factors, seed, epoch)`. With `max_seconds` (the model
    family's window, e.g. Whisper's 30 s) a factor that would stretch a clip past it is skipped (the clip keeps
    its speed), and a clip already longer is an `AudioError`: the dataset never yields one. Call `set_epoch(e)`
    before creating the DataLoader iterator for that epoch: worker processes receive a copy of the dataset at that
    moment, so do not combine this with `persistent_workers=True`.
    """

    def __init__(
        self,
        transform: Callable[[dict], dict] | None = None,
        speed_factors: Sequence[float] | None = None,
        seed: int = 0,
        for_training_text: bool = True,
        max_seconds: float | None = None,
    ):
        if not _is_int(seed):
            raise ConfigError(f"seed: expected an integer, got {seed!r}")
        if max_seconds is not None and not _is_positive_number(max_seconds):
            raise ConfigError(f"max_seconds: expected seconds > 0 or None, got {max_seconds!r}")
        self.transform = transform
        self.speed_factors = check_speed_factors(speed_factors) if speed_factors else None
        self.seed = int(seed)
        self.for_training_text = for_training_text
        self.max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)  # at 16 kHz
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and cut id, decides each cut's speed factor."""
        self.epoch = int(epoch)

    def _perturbed(self, cut, cut_id: str):
        """The cut at this epoch's speed factor, or unchanged when the factor would stretch it past `max_seconds`
        (Lhotse's own sample count, so the check needs no audio)."""
        if self.max_samples is not None and cut.num_samples > self.max_samples:
            raise AudioError(
                f"cut {cut_id}: {cut.duration:.2f} s is longer than the model takes "
                f"({self.max_samples / SAMPLE_RATE:g} s); remove it from the manifest (for training, "
                "data.max_duration filters it)",
                reason="too_long",
            )
        factor = speed_factor(cut_id, self.speed_factors, self.seed, self.epoch) if self.speed_factors else 1.0
        if factor == 1.0:
            return cut
        # Renames the cut (`<id>_sp0.9`) and scales its duration by 1/factor; supervisions follow.
        perturbed = cut.perturb_speed(factor)
        if self.max_samples is not None and perturbed.num_samples > self.max_samples:
            return cut
        return perturbed

    def __getitem__(self, cuts: CutSet) -> dict:
        ids, texts, domains, signals = [], [], [], []
        for cut in cuts:
            cut_id, text = cut.id, cut_text(cut)
            ids.append(cut_id)
            texts.append(for_training(text) if self.for_training_text else text)
            domains.append(cut_domain(cut))
            if cut.sampling_rate != SAMPLE_RATE:
                cut = cut.resample(SAMPLE_RATE)
            # (T,) float32 at 16 kHz, channels averaged; unreadable, empty or NaN/inf audio is an AudioError
            # naming the original cut id and its file.
            signals.append(load_cut_audio(self._perturbed(cut, cut_id), label=f"cut {cut_id}"))
        if not signals:
            raise DataError("received an empty batch of cuts")

        lens = torch.tensor([len(s) for s in signals], dtype=torch.long)  # (B,) samples
        audio = torch.zeros(len(signals), int(lens.max()), dtype=torch.float32)  # (B, T)
        for row, signal in enumerate(signals):
            audio[row, : len(signal)] = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
        batch = {
            "ids": ids,
            "audio": audio,
            "audio_lens": lens,
            "texts": texts,
            "domains": domains,
            "durations": [n / SAMPLE_RATE for n in lens.tolist()],
        }
        return self.transform(batch) if self.transform is not None else batch


class BatchSpecAugment(torch.nn.Module):
    """SpecAugment over a padded feature batch (B, T, F), each utterance masked within its own length.

    A thin wrapper over Lhotse's masking and time-warp functions (`lhotse.dataset.signal_transforms`). Lhotse's
    `SpecAugment` module takes the time-mask width in frames and caps the *total* masked fraction, and masks the
    padding too; the recipe convention is "N time masks, each up to a fraction of the utterance", which needs
    the width derived from each utterance's true length, so we call Lhotse's functions per utterance.

    Randomness: mask widths and positions draw from the torch global RNG, the time-warp centre from NumPy's
    global RNG (Lhotse's `time_warp`). Apply it in the training process (not in DataLoader workers), so both
    RNG states are in the training checkpoint and a resumed run masks identically. Identity in eval mode.
    """

    def __init__(
        self,
        num_freq_masks: int,
        max_freq_width: int,
        num_time_masks: int,
        max_time_fraction: float,
        time_warp_factor: int | None,
    ):
        super().__init__()
        self.num_freq_masks = num_freq_masks
        self.max_freq_width = max_freq_width  # bins; each mask is 0..max_freq_width bins wide
        self.num_time_masks = num_time_masks
        self.max_time_fraction = max_time_fraction  # each time mask is 0..this × utterance frames wide
        self.time_warp_factor = time_warp_factor  # frames; None disables warping

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.num_freq_masks}×≤{self.max_freq_width} bins, "
            f"time_masks={self.num_time_masks}×≤{self.max_time_fraction:.0%}, time_warp={self.time_warp_factor}"
        )

    def _augment_one(self, features: torch.Tensor) -> torch.Tensor:
        """(L, F) -> (L, F), in float32."""
        num_frames, num_bins = features.shape
        if self.time_warp_factor:
            features = time_warp(features, factor=self.time_warp_factor)
        mean = features.mean()  # masked regions take the utterance mean, as in Lhotse
        if self.num_freq_masks > 0 and self.max_freq_width > 0:
            # Lhotse draws widths in [0, mask_size): +1 makes max_freq_width inclusive; capped at F bins.
            features = mask_along_axis_optimized(
                features, min(self.max_freq_width, num_bins) + 1, self.num_freq_masks, mean, axis=2
            )
        max_width = int(self.max_time_fraction * num_frames)  # frames
        if self.num_time_masks > 0 and max_width > 0:
            features = mask_along_axis_optimized(features, max_width + 1, self.num_time_masks, mean, axis=1)
        return features

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, T, F) and lengths (B,) in frames (None: all T) -> augmented copy (B, T, F)."""
        if not self.training:
            return features
        if features.dim() != 3:
            raise ValueError(f"SpecAugment expects features (B, T, F), got shape {tuple(features.shape)}")
        out = features.clone()
        for row in range(features.size(0)):
            length = features.size(1) if lengths is None else int(lengths[row])
            if length <= 0:
                continue
            # Lhotse's masking writes into its input: work on `out` (our copy), never on the caller's tensor.
            # float32: bicubic warping is not implemented for every low-precision dtype on CPU.
            augmented = self._augment_one(out[row, :length].float())
            out[row, :length] = augmented.to(out.dtype)
        return out


def make_spec_augment(
    num_freq_masks: int = 2,
    max_freq_width: int = 27,
    num_time_masks: int = 10,
    max_time_fraction: float = 0.05,
    time_warp: bool = True,
    time_warp_factor: int = 80,
) -> BatchSpecAugment:
    """SpecAugment from recipe values (defaults: REFERENCE.md "Data pipeline conventions").

    Args:
        num_freq_masks: frequency masks per utterance (2).
        max_freq_width: widest frequency mask in feature bins (27).
        num_time_masks: time masks per utterance (10).
        max_time_fraction: widest time mask as a fraction of the utterance's frames (0.05).
        time_warp: warp the time axis first (Lhotse's SpecAugment default).
        time_warp_factor: warp parameter W in frames (Lhotse's default 80).

    Raises `ConfigError` listing every invalid value.
    """
    problems = []
    for name, value in (
        ("num_freq_masks", num_freq_masks),
        ("max_freq_width", max_freq_width),
        ("num_time_masks", num_time_masks),
    ):
        if not (_is_int(value) and value >= 0):
            problems.append(f"{name}: expected an integer >= 0, got {value!r}")
    if not (
        isinstance(max_time_fraction, Real)
        and not isinstance(max_time_fraction, bool)
        and 0.0 <= max_time_fraction <= 1.0
    ):
        problems.append(f"max_time_fraction: expected a fraction in [0, 1], got {max_time_fraction!r}")
    if not isinstance(time_warp, bool):
        problems.append(f"time_warp: expected true/false, got {time_warp!r}")
    if time_warp and not (_is_int(time_warp_factor) and time_warp_factor >= 1):
        problems.append(f"time_warp_factor: expected an integer >= 1 (frames), got {time_warp_factor!r}")
    if problems:
        raise ConfigError("invalid SpecAugment settings", problems=problems)
    return BatchSpecAugment(
        num_freq_masks=int(num_freq_masks),
        max_freq_width=int(max_freq_width),
        num_time_masks=int(num_time_masks),
        max_time_fraction=float(max_time_fraction),
        time_warp_factor=int(time_warp_factor) if time_warp else None,
    )


# ------------------------------------------------------------------------------------------------ from a recipe
# The training loop builds its data pipeline from the typed recipe through these three functions, so batch size,
# bucketing and augmentation are changed in YAML, never in code.


def sampler_from_recipe(recipe, cuts: CutSet, *, world_size: int = 1, rank: int = 0):
    """The training sampler: `train.micro_batch` cuts per micro-batch at most, `train.max_batch_duration` seconds
    of padded audio at most (no cap when unset), `train.num_buckets` duration buckets, seeded by `train.seed`."""
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


def dataset_from_recipe(recipe, transform=None, train: bool = True) -> AsrBatchDataset:
    """The batch dataset: speed perturbation with `augment.speed_factors` in training, none in evaluation; clips
    held to the model family's window (`max_audio_seconds`)."""
    from caspi.models.families import get_family

    factors = recipe.augment.speed_factors if train else None
    if factors is not None and set(factors) <= {1.0}:
        factors = None  # [] or [1.0]: perturbation off
    return AsrBatchDataset(transform=transform, speed_factors=factors, seed=recipe.train.seed,
                           max_seconds=get_family(recipe.model.family).max_audio_seconds)


def check_targets(cuts: CutSet, source: str) -> None:
    """Refuse training cuts whose transcript is empty in its training form (`for_training`: whitespace only, or only
    niqqud and invisible characters): the model would learn to emit nothing for speech. One `DataError` with the
    count and up to 5 ids, raised before any model is built. `source` names the manifest in the message."""
    empty = [cut.id for cut in cuts if not for_training(cut_text(cut)).strip()]
    if empty:
        examples = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(
            f"{source}: {len(empty)} of {len(cuts)} training cuts have an empty transcript (after normalisation), "
            f"e.g. {examples}; remove them (the Phase 0 audit's cleaned manifest drops them) or fix their text"
        )


def spec_augment_from_recipe(recipe) -> BatchSpecAugment | None:
    """SpecAugment from `augment.spec_augment`, or None when disabled."""
    s = recipe.augment.spec_augment
    if not s.enabled:
        return None
    return make_spec_augment(
        num_freq_masks=s.freq_masks,
        max_freq_width=s.max_freq_width,
        num_time_masks=s.time_masks,
        max_time_fraction=s.max_time_width,
        time_warp=s.time_warp,
    )
