"""The training dataset: one sampled micro-batch of cuts in, padded audio and training text (then features and
tokens) out, with speed perturbation that a resumed run repeats exactly.

`AsrBatchDataset` (Lhotse style: `dataset[cuts] -> dict`, fed by a sampler from `caspi.data.sampling`) loads audio
through `caspi.data.cuts.load_cut_audio` (the loader import, audit and eval use: 16 kHz, channels averaged, NaN/inf
refused naming the cut), applies speed perturbation chosen by `speed_factor(cut_id, factors, seed, epoch)` (a pure
function, so a resumed run makes the same choices) unless it would stretch the clip past the model's window, and
zero-pads the batch. Feature extraction and tokenisation are model-family specific: the optional `transform` (the
family's), so this module needs no model. `dataset_from_recipe` builds the dataset from the recipe, with the
family's window passed in by the caller; `check_targets` refuses a training set with empty transcripts before any
model work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from lhotse import CutSet

from caspi.data.audio import SAMPLE_RATE
from caspi.data.checks import is_int, is_positive_number
from caspi.data.cuts import cut_domain, cut_text, load_cut_audio
from caspi.data.text import for_training
from caspi.errors import AudioError, ConfigError, DataError

DEFAULT_SPEED_FACTORS = (0.9, 1.0, 1.1)  # REFERENCE.md "Data pipeline conventions"




def check_speed_factors(factors: Sequence[float]) -> tuple[float, ...]:
    """Validate speed perturbation factors (each finite and > 0; non-empty) and return them as a tuple."""
    values = tuple(factors)
    bad = [f for f in values if not is_positive_number(f)]
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
        if not is_int(seed):
            raise ConfigError(f"seed: expected an integer, got {seed!r}")
        if max_seconds is not None and not is_positive_number(max_seconds):
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


def dataset_from_recipe(recipe, transform=None, train: bool = True, *, max_seconds: float | None) -> AsrBatchDataset:
    """The batch dataset: speed perturbation with `augment.speed_factors` in training, none in evaluation; clips
    held to `max_seconds`, the model family's window (`get_family(recipe.model.family).max_audio_seconds`; None
    for no fixed window). The caller passes it because data does not import models."""
    factors = recipe.augment.speed_factors if train else None
    if factors is not None and set(factors) <= {1.0}:
        factors = None  # [] or [1.0]: perturbation off
    return AsrBatchDataset(transform=transform, speed_factors=factors, seed=recipe.train.seed, max_seconds=max_seconds)


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
