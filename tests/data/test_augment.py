"""Tests for caspi.data.augment: SpecAugment masks within lengths and limits, reproducibly, and from a recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from caspi.config import load_recipe
from caspi.data.augment import make_spec_augment, spec_augment_from_recipe
from caspi.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def masked_frames(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(T,) bool: frames that changed in every bin (whole-frame time masks)."""
    return (before != after).all(dim=-1)


def test_spec_augment_masks_within_lengths_and_keeps_shape():
    torch.manual_seed(0)
    np.random.seed(0)
    features = torch.randn(3, 300, 80)  # (B, T, F)
    lengths = torch.tensor([300, 200, 120])
    spec = make_spec_augment()
    spec.train()
    original = features.clone()
    out = spec(features, lengths)
    assert torch.equal(features, original)  # the caller's tensor is not modified in place
    assert out.shape == features.shape and out.dtype == features.dtype
    for row, length in enumerate(lengths.tolist()):
        assert not torch.equal(out[row, :length], features[row, :length])  # something was masked
        assert torch.equal(out[row, length:], features[row, length:])  # padding untouched
    spec.eval()
    assert torch.equal(spec(features, lengths), features)


def test_spec_augment_widths_respect_the_limits():
    for seed in range(20):
        torch.manual_seed(seed)
        features = torch.randn(1, 400, 80)
        time_only = make_spec_augment(num_freq_masks=0, num_time_masks=1, max_time_fraction=0.05, time_warp=False)
        out = time_only.train()(features)
        assert int(masked_frames(features[0], out[0]).sum()) <= 20  # 5 % of 400 frames
        freq_only = make_spec_augment(num_freq_masks=2, max_freq_width=10, num_time_masks=0, time_warp=False)
        out = freq_only.train()(features)
        changed_bins = (features[0] != out[0]).all(dim=0)
        assert int(changed_bins.sum()) <= 20  # 2 masks × at most 10 bins


def test_spec_augment_is_reproducible_from_the_global_rng_states():
    features = torch.randn(2, 250, 80)
    spec = make_spec_augment().train()
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        np.random.seed(5)
        outs.append(spec(features, torch.tensor([250, 180])))
    assert torch.equal(outs[0], outs[1])


def test_spec_augment_settings_are_validated():
    with pytest.raises(ConfigError) as info:
        make_spec_augment(num_freq_masks=-1, max_time_fraction=1.5, time_warp_factor=0)
    assert len(info.value.problems) == 3


# --- wired from the recipe ---------------------------------------------------------------------------------------


def test_spec_augment_from_recipe_follows_yaml_and_overrides():
    augment = spec_augment_from_recipe(load_recipe(RECIPES / "round2-2xa100.yaml"))
    assert augment is not None and augment.training
    off = load_recipe(RECIPES / "round2-2xa100.yaml", ["augment.spec_augment.enabled=false"])
    assert spec_augment_from_recipe(off) is None
