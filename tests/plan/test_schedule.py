"""Steps, hours and cost (caspi.plan.schedule) against hand-computed cases, and against the trainer's own count."""

import math
import random
from pathlib import Path

import pytest
from lhotse import CutSet

from caspi.config import load_recipe
from caspi.errors import ConfigError
from caspi.plan import schedule
from caspi.plan.schedule import (
    DDP_EFFICIENCY,
    accumulation,
    batches_per_rank,
    cost_usd,
    count_steps,
    divisible_micro_batch,
    packed_batches,
    phase_epochs,
    require_positive,
    run_hours,
)
from caspi.testing import metadata_cut
from caspi.train.batches import count_batches

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def round2():
    return load_recipe(RECIPES / "round2-2xa100.yaml")


def _cuts(durations):
    return CutSet.from_cuts(metadata_cut(f"c{i:05d}", d) for i, d in enumerate(durations))


def test_phases_run_until_the_next_one_starts(round2):
    assert phase_epochs(round2) == [(1, 2), (3, 5)]  # Strategy B epochs 1-2, Strategy A epochs 3-5
    three = load_recipe(RECIPES / "round2-2xa100.yaml", [
        "train.epochs=6",
        'unfreeze.phases=[{"name": "a", "start_epoch": 1, "lr": {"projector": 1e-4}}, '
        '{"name": "b", "start_epoch": 2, "lr": {"projector": 1e-4}}, '
        '{"name": "c", "start_epoch": 6, "lr": {"projector": 1e-4}}]'])
    assert phase_epochs(three) == [(1, 1), (2, 5), (6, 6)]


def test_seed_002_steps_by_hand(round2):
    # Seed 002: 186,812 samples, effective batch 64 → ceil(186,812 / 64) = 2,919 steps an epoch on 2 or 8 GPUs.
    for world, accum in ((1, 32), (2, 16), (8, 4)):
        assert accumulation(round2, world) == accum
        batches, exact = batches_per_rank(round2, world, samples=186_812)
        assert batches == math.ceil(186_812 / (2 * world)) and not exact
        steps = count_steps(round2, batches, accum)
        assert steps.steps_per_epoch == 2_919
        assert steps.total_steps == 14_595
        assert steps.phase_steps == [2 * 2_919, 3 * 2_919]  # Strategy B 5,838; Strategy A 8,757


def test_last_partial_step_of_an_epoch_still_steps(round2):
    # 10 micro-batches at accumulation 4: steps of 4, 4 and 2 micro-batches.
    steps = count_steps(round2, 10, 4)
    assert (steps.steps_per_epoch, steps.total_steps, steps.phase_steps) == (3, 15, [6, 9])


def test_max_steps_cuts_the_run_and_its_phases(round2):
    capped = round2.model_copy(update={"train": round2.train.model_copy(update={"max_steps": 8})})
    steps = count_steps(capped, 10, 4)  # 3 steps an epoch: phase B has 6, phase A gets the 2 left
    assert steps.phase_steps == [6, 2] and steps.total_steps == 8
    assert steps.epochs_run == pytest.approx(8 / 3)
    early = capped.model_copy(update={"train": capped.train.model_copy(update={"max_steps": 4})})
    assert count_steps(early, 10, 4).phase_steps == [4, 0]


def test_not_divisible_layout_has_no_accumulation_and_a_suggestion(round2):
    assert accumulation(round2, 3) is None  # 64 is not a multiple of 2 × 3
    assert divisible_micro_batch(round2, 3) is None  # nor of 3: no micro-batch helps
    demo = load_recipe(RECIPES / "demo-cpu.yaml")  # micro 16, effective 16
    assert accumulation(demo, 2) is None
    assert divisible_micro_batch(demo, 2) == 8  # 16 / 2 GPUs = 8 per GPU
    odd = demo.model_copy(update={"train": demo.train.model_copy(update={"micro_batch": 5, "effective_batch": 24})})
    assert divisible_micro_batch(odd, 2) == 4  # 12 per GPU: 5 does not divide it, 4 is the largest that does


def test_hours_and_cost_by_hand():
    # 100,000 clips × 5 epochs at 10 samples/s on one GPU: 50,000 s = 13.89 h.
    assert run_hours(100_000, 5, 10.0, 1) == pytest.approx(13.888_889)
    # 8 GPUs at the assumed efficiency: 500,000 samples / (10 × 8 × 0.9 samples/s) = 6,944 s = 1.93 h.
    hours = run_hours(100_000, 5, 10.0, 8)
    assert DDP_EFFICIENCY == 0.9 and hours == pytest.approx(1.929_012)
    assert cost_usd(hours, 8, 1.60) == pytest.approx(hours * 8 * 1.60)
    assert cost_usd(2.5, 2, 1.60) == pytest.approx(8.0)  # 5 GPU-hours at $1.60
    with pytest.raises(ConfigError, match="throughput"):
        run_hours(100, 1, 0.0, 1)


def test_packing_estimate_by_hand():
    assert packed_batches([5.0] * 10, micro_batch=4, max_batch_duration=None) == 3  # 4 + 4 + 2
    # Padded seconds: a batch of n clips counts n × its longest. 10 s cap: [9], [4, 4], [3, 3, 3], [1 ×4, 1 ×1]...
    durations = [9, 4, 4, 3, 3, 3, 1, 1, 1, 1, 1]
    assert packed_batches(durations, micro_batch=4, max_batch_duration=10.0) == 5  # [9] [4 4] [3 3 3] [1 1 1 1] [1]
    assert packed_batches([], micro_batch=4, max_batch_duration=None) == 0


def test_small_manifest_gets_the_trainers_exact_count(round2):
    rng = random.Random(0)
    cuts = _cuts([rng.uniform(1, 15) for _ in range(500)])
    for world in (1, 2):
        batches, exact = batches_per_rank(round2, world, cuts=cuts)
        assert exact and batches == count_batches(round2, cuts, world_size=world, rank=0)


def test_large_manifest_estimate_is_close_to_the_sampler(round2, monkeypatch):
    rng = random.Random(1)
    cuts = _cuts([rng.uniform(1, 15) for _ in range(3_000)])
    monkeypatch.setattr(schedule, "EXACT_COUNT_CUTS", 1_000)  # treat 3,000 cuts as a large manifest
    estimate, exact = batches_per_rank(round2, 2, cuts=cuts)
    real = count_batches(round2, cuts, world_size=2, rank=0)
    assert not exact and estimate == 750  # 3,000 / (2 × 2)
    assert estimate <= real <= estimate * 1.02  # the sampler's bucket tails add a few batches


def test_bad_numbers_name_the_option():
    require_positive("gpus", 2, integer=True)
    require_positive("price", 0.0, allow_zero=True)
    for name, value, kwargs in (("gpus", 0, {"integer": True}), ("gpus", 1.5, {"integer": True}),
                                ("price", -1.0, {"allow_zero": True}), ("throughput", float("nan"), {}),
                                ("samples", True, {"integer": True})):
        with pytest.raises(ConfigError, match=name):
            require_positive(name, value, **kwargs)
