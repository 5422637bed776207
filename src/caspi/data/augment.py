"""SpecAugment for padded feature batches (B, T, F): frequency masks, time masks sized per utterance, time warp.

It works on features, not audio, so it runs after the model family's feature extraction, in the training process
(not in DataLoader workers) and in train mode only: its random draws then come from the global RNGs the training
checkpoint saves, and a resumed run masks identically. `make_spec_augment` validates recipe values and builds the
module; `spec_augment_from_recipe` is the training loop's entry (augmentation changes in YAML, never in code).
"""

from __future__ import annotations

from numbers import Real

import torch
from lhotse.dataset.signal_transforms import mask_along_axis_optimized, time_warp

from caspi.data.checks import is_int
from caspi.errors import ConfigError


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
        if not (is_int(value) and value >= 0):
            problems.append(f"{name}: expected an integer >= 0, got {value!r}")
    if not (
        isinstance(max_time_fraction, Real)
        and not isinstance(max_time_fraction, bool)
        and 0.0 <= max_time_fraction <= 1.0
    ):
        problems.append(f"max_time_fraction: expected a fraction in [0, 1], got {max_time_fraction!r}")
    if not isinstance(time_warp, bool):
        problems.append(f"time_warp: expected true/false, got {time_warp!r}")
    if time_warp and not (is_int(time_warp_factor) and time_warp_factor >= 1):
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


def spec_augment_from_recipe(recipe) -> BatchSpecAugment | None:
    """SpecAugment from `augment.spec_augment` of the typed recipe (duck-typed: data does not import config), or
    None when disabled."""
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
