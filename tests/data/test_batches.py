"""Tests for caspi.data.batches: bucketed sampling, exact resume, speed perturbation, SpecAugment, collation."""

from __future__ import annotations

import io
import random
import warnings
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler
from torch.utils.data import DataLoader

from caspi.data.audio import SAMPLE_RATE
from caspi.data.batches import (
    AsrBatchDataset,
    check_targets,
    make_sampler,
    make_spec_augment,
    restore_sampler,
    sampler_state,
    speed_factor,
)
from caspi.data.cuts import cut_domain, cut_text, load_cut_audio, make_cut
from caspi.errors import AudioError, CheckpointError, ConfigError, DataError

# ---------------------------------------------------------------- helpers


def metadata_cuts(n: int, seed: int = 0, low: float = 1.0, high: float = 15.0) -> CutSet:
    """`n` cuts of uniform random duration in [low, high] s whose audio files do not exist (metadata only)."""
    rng = random.Random(seed)
    return CutSet.from_cuts(
        make_cut(
            f"utt{i:04d}",
            "/nonexistent/audio.flac",
            int(rng.uniform(low, high) * SAMPLE_RATE),
            "שלום עולם",
            domain=f"d{i % 3}",
        )
        for i in range(n)
    )


def ids_of(batches) -> list[list[str]]:
    return [[cut.id for cut in batch] for batch in batches]


def padding_waste(batches) -> float:
    total = speech = 0.0  # seconds
    for batch in batches:
        durations = [cut.duration for cut in batch]
        total += len(durations) * max(durations)
        speech += sum(durations)
    return (total - speech) / total


SAMPLER_KW = {"max_cuts": 6, "max_duration": 40.0, "num_buckets": 8, "seed": 3}


class IdsDataset(torch.utils.data.Dataset):
    """Returns the ids of the sampled batch: lets a DataLoader run the sampler without any audio."""

    def __getitem__(self, cuts):
        return [cut.id for cut in cuts]


# ---------------------------------------------------------------- sampler


def test_batches_respect_max_duration_and_max_cuts_and_cover_every_cut():
    cuts = metadata_cuts(300)
    sampler = make_sampler(cuts, max_cuts=6, max_duration=40.0, num_buckets=10)
    seen = []
    for batch in sampler:
        durations = [cut.duration for cut in batch]
        assert 1 <= len(durations) <= 6
        # Lhotse's limit (padding counted: size × longest) holds for the batch before its last cut was added;
        # that cut comes from the same duration bucket, so it can only overshoot slightly.
        if len(durations) > 1:
            assert len(durations) * max(durations[:-1]) <= 40.0 + 1e-9
        assert len(durations) * max(durations) <= 40.0 * 1.1
        seen.extend(cut.id for cut in batch)
    assert sorted(seen) == sorted(cuts.ids)


def test_max_cuts_alone_bounds_batch_size():
    sampler = make_sampler(metadata_cuts(50), max_cuts=4)
    sizes = [len(batch) for batch in sampler]
    assert max(sizes) == 4 and sum(sizes) == 50


def test_bucketing_pads_far_less_than_random_batching():
    cuts = metadata_cuts(600, seed=1)
    ours = padding_waste(make_sampler(cuts, max_cuts=None, max_duration=120.0, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random_batches = SimpleCutSampler(cuts, max_duration=120.0, shuffle=True, seed=1)
    theirs = padding_waste(random_batches)
    assert ours < theirs / 3, (ours, theirs)


def test_tiny_cut_sets_still_yield_every_cut():
    for n in (1, 2, 5):
        sampler = make_sampler(metadata_cuts(n), max_cuts=4, max_duration=60.0)
        assert sum(len(batch) for batch in sampler) == n


def test_shuffle_changes_order_between_epochs_but_not_between_identical_samplers():
    cuts = metadata_cuts(120)
    first = make_sampler(cuts, **SAMPLER_KW)
    second = make_sampler(cuts, **SAMPLER_KW)
    assert ids_of(first) == ids_of(second)
    first.set_epoch(1)
    assert ids_of(first) != ids_of(second)


def test_invalid_sampler_arguments_are_all_reported():
    with pytest.raises(ConfigError) as info:
        make_sampler(metadata_cuts(10), max_cuts=0, max_duration=-1.0, num_buckets=0, world_size=2, rank=2)
    text = str(info.value)
    for field in ("max_cuts", "max_duration", "num_buckets", "rank"):
        assert field in text
    assert len(info.value.problems) == 4
    with pytest.raises(ConfigError, match="both None"):
        make_sampler(metadata_cuts(10), max_cuts=None, max_duration=None)
    with pytest.raises(ConfigError, match="seed"):
        make_sampler(metadata_cuts(10), max_cuts=2, seed="randomized")


def test_cut_longer_than_max_duration_is_named():
    long_one = make_cut("long-one", "/x.flac", 30 * SAMPLE_RATE, "א")
    cuts = CutSet.from_cuts([*metadata_cuts(20, high=9.0), long_one])
    with pytest.raises(ConfigError, match="long-one"):
        make_sampler(cuts, max_cuts=4, max_duration=20.0)
    with pytest.raises(ConfigError, match="quadratic"):  # 9 + 81/5 = 25.2 s effective > 20 s
        make_sampler(metadata_cuts(20, low=8.9, high=9.0), max_cuts=4, max_duration=20.0, quadratic_duration=5.0)


def test_empty_cut_set_is_a_data_error():
    with pytest.raises(DataError):
        make_sampler(CutSet.from_cuts([]), max_cuts=2)


def test_distributed_ranks_are_disjoint_equal_length_and_cover_the_data():
    cuts = metadata_cuts(203, seed=2)
    per_rank = [ids_of(make_sampler(cuts, **SAMPLER_KW, world_size=2, rank=r)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1])  # DDP ranks must step together
    flat = [{i for batch in batches for i in batch} for batches in per_rank]
    assert not flat[0] & flat[1]
    assert flat[0] | flat[1] == set(cuts.ids)


# ---------------------------------------------------------------- exact resume


def run_epochs(sampler, epochs) -> list[list[list[str]]]:
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(ids_of(sampler))
    return out


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 0), (2, 1)])
@pytest.mark.parametrize("stop_epoch,stop_after", [(0, 5), (1, 3), (0, 0)])
def test_resume_yields_exactly_the_remaining_batches(world_size, rank, stop_epoch, stop_after):
    cuts = metadata_cuts(160, seed=4)
    kw = dict(SAMPLER_KW, world_size=world_size, rank=rank)
    reference = run_epochs(make_sampler(cuts, **kw), [0, 1, 2])
    assert reference[0] != reference[1]  # shuffling differs per epoch, so an epoch mix-up would be caught

    interrupted = make_sampler(cuts, **kw)
    run_epochs(interrupted, range(stop_epoch))
    interrupted.set_epoch(stop_epoch)
    batches = iter(interrupted)
    consumed = [[c.id for c in next(batches)] for _ in range(stop_after)]
    state = sampler_state(interrupted)
    buffer = io.BytesIO()  # the state must survive a checkpoint file loaded with weights_only
    torch.save(state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = make_sampler(cuts, **kw)
    restore_sampler(resumed, state)
    # The training loop's usual shape: for epoch in range(saved epoch, n): set_epoch(epoch); iterate.
    remaining = run_epochs(resumed, range(resumed.epoch, 3))

    assert consumed == reference[stop_epoch][:stop_after]
    assert remaining[0] == reference[stop_epoch][stop_after:]
    assert remaining[1:] == reference[stop_epoch + 1 :]


def test_resume_behind_a_prefetching_dataloader_uses_the_consumed_count():
    cuts = metadata_cuts(150, seed=5)
    reference = ids_of(make_sampler(cuts, **SAMPLER_KW))

    sampler = make_sampler(cuts, **SAMPLER_KW)
    loader = DataLoader(IdsDataset(), sampler=sampler, batch_size=None, num_workers=1, prefetch_factor=2)
    consumed = []
    for ids in loader:
        consumed.append(ids)
        if len(consumed) == 4:
            break
    # The worker has drawn batches beyond the 4 consumed: the raw state would skip them on resume.
    assert sampler.state_dict()["diagnostics"]["stats_per_epoch"][0]["kept_batches"] > 4
    state = sampler_state(sampler, batches_consumed=len(consumed))
    del loader

    resumed = make_sampler(cuts, **SAMPLER_KW)
    restore_sampler(resumed, state)
    assert consumed + ids_of(resumed) == reference


def test_lazy_manifest_samples_and_resumes(tmp_path):
    path = tmp_path / "cuts.jsonl.gz"
    metadata_cuts(90, seed=6).to_file(path)
    lazy = CutSet.from_jsonl_lazy(path)
    reference = ids_of(make_sampler(lazy, **SAMPLER_KW))
    assert sorted(i for batch in reference for i in batch) == sorted(metadata_cuts(90, seed=6).ids)
    sampler = make_sampler(CutSet.from_jsonl_lazy(path), **SAMPLER_KW)
    batches = iter(sampler)
    consumed = [[c.id for c in next(batches)] for _ in range(3)]
    resumed = make_sampler(CutSet.from_jsonl_lazy(path), **SAMPLER_KW)
    restore_sampler(resumed, sampler_state(sampler))
    assert consumed + ids_of(resumed) == reference


def test_restore_rejects_mismatched_state():
    cuts = metadata_cuts(60)
    sampler = make_sampler(cuts, **SAMPLER_KW)
    next(iter(sampler))
    with pytest.raises(CheckpointError, match="impossible"):
        sampler_state(sampler, batches_consumed=2)
    state = sampler_state(sampler)
    with pytest.raises(CheckpointError, match="world_size"):
        restore_sampler(make_sampler(cuts, **SAMPLER_KW, world_size=2, rank=0), state)
    bigger = sampler_state(sampler)
    bigger["diagnostics"]["stats_per_epoch"][0]["kept_batches"] = 10_000
    with pytest.raises(CheckpointError, match="another manifest"):
        restore_sampler(make_sampler(cuts, **SAMPLER_KW), bigger)
    with pytest.raises(CheckpointError, match="max_duration: saved 40.0, now 30.0"):
        restore_sampler(make_sampler(cuts, **{**SAMPLER_KW, "max_duration": 30.0}), state)
    restore_sampler(make_sampler(cuts, **SAMPLER_KW), state)  # the state itself was not consumed by the errors


# ---------------------------------------------------------------- speed perturbation


def test_speed_factor_is_a_pure_function_of_seed_epoch_and_id():
    factors = (0.9, 1.0, 1.1)
    ids = [f"utt{i}" for i in range(3000)]
    choices = [speed_factor(i, factors, seed=7, epoch=2) for i in ids]
    assert choices == [speed_factor(i, factors, seed=7, epoch=2) for i in ids]
    assert choices != [speed_factor(i, factors, seed=7, epoch=3) for i in ids]
    assert choices != [speed_factor(i, factors, seed=8, epoch=2) for i in ids]
    shares = {f: n / len(ids) for f, n in Counter(choices).items()}
    assert set(shares) == set(factors)
    assert all(0.29 < share < 0.38 for share in shares.values()), shares  # uniform: 1/3 each


def test_perturbed_cut_keeps_text_and_domain_and_scales_duration():
    cut = make_cut("utt", "/nonexistent.flac", 2 * SAMPLE_RATE, "שלום עולם", domain="studio")
    fast = cut.perturb_speed(1.1)
    assert fast.duration == pytest.approx(2 / 1.1, abs=1e-3)
    assert cut_text(fast) == "שלום עולם" and cut_domain(fast) == "studio"


# ---------------------------------------------------------------- dataset on real FLAC files

TRANSCRIPTS = {"a": "שָׁלוֹם עוֹלָם", "b": "מה   שלומך?", "c": "בוקר טוב"}
SECONDS = {"a": 1.0, "b": 0.5, "c": 0.75}


@pytest.fixture
def flac_cuts(tmp_path) -> CutSet:
    cuts = []
    for index, (name, seconds) in enumerate(SECONDS.items()):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        signal = (0.3 * np.sin(2 * np.pi * (200 + 100 * index) * t)).astype(np.float32)
        path = tmp_path / f"{name}.flac"
        sf.write(str(path), signal, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        cuts.append(make_cut(name, path, len(signal), TRANSCRIPTS[name], domain=f"dom-{name}"))
    return CutSet.from_cuts(cuts)


def test_dataset_collates_padded_audio_lengths_texts_and_domains(flac_cuts):
    batch = AsrBatchDataset()[flac_cuts]
    assert batch["ids"] == ["a", "b", "c"]
    assert batch["audio"].shape == (3, SAMPLE_RATE) and batch["audio"].dtype == torch.float32
    assert batch["audio_lens"].tolist() == [16000, 8000, 12000]
    assert batch["audio_lens"].dtype == torch.long
    for row, cut in enumerate(flac_cuts):
        n = int(batch["audio_lens"][row])
        expected, _ = sf.read(cut.recording.sources[0].source, dtype="float32")
        np.testing.assert_allclose(batch["audio"][row, :n].numpy(), expected, atol=1e-6)
        assert torch.all(batch["audio"][row, n:] == 0)
    assert batch["texts"] == ["שלום עולם", "מה שלומך?", "בוקר טוב"]  # for_training: niqqud gone, spaces collapsed
    assert batch["domains"] == ["dom-a", "dom-b", "dom-c"]
    assert batch["durations"] == pytest.approx([1.0, 0.5, 0.75])
    raw = AsrBatchDataset(for_training_text=False)[flac_cuts]
    assert raw["texts"][0] == "שָׁלוֹם עוֹלָם"


def test_dataset_speed_perturbation_is_deterministic_and_keeps_ids_text_domain(flac_cuts):
    factors = [0.9, 1.1]  # no 1.0: every cut is perturbed
    dataset = AsrBatchDataset(speed_factors=factors, seed=11)
    dataset.set_epoch(4)
    batch = dataset[flac_cuts]
    assert batch["ids"] == ["a", "b", "c"]
    assert batch["domains"] == ["dom-a", "dom-b", "dom-c"]
    assert batch["texts"] == ["שלום עולם", "מה שלומך?", "בוקר טוב"]
    for row, name in enumerate(["a", "b", "c"]):
        factor = speed_factor(name, factors, seed=11, epoch=4)
        expected = SECONDS[name] * SAMPLE_RATE / factor  # duration scales by 1/factor
        assert abs(int(batch["audio_lens"][row]) - expected) <= 2
        assert batch["durations"][row] == pytest.approx(int(batch["audio_lens"][row]) / SAMPLE_RATE)
    again = dataset[flac_cuts]
    assert torch.equal(batch["audio"], again["audio"])
    epochs = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        epochs.append(dataset[flac_cuts]["audio_lens"].tolist())
    assert len({tuple(lens) for lens in epochs}) > 1  # choices change with the epoch


def test_dataset_through_dataloader_and_sampler_with_transform(flac_cuts):
    def add_flag(batch):
        return {**batch, "transformed": True}

    sampler = make_sampler(flac_cuts, max_cuts=2, max_duration=10.0)
    loader = DataLoader(AsrBatchDataset(transform=add_flag), sampler=sampler, batch_size=None)
    batches = list(loader)
    assert all(b["transformed"] for b in batches)
    assert sorted(i for b in batches for i in b["ids"]) == ["a", "b", "c"]
    assert all(b["audio"].shape[0] == len(b["ids"]) <= 2 for b in batches)


def test_corrupt_audio_is_a_data_error_naming_cut_and_file(tmp_path, flac_cuts):
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC" + b"\x00garbage" * 50)
    broken = make_cut("broken-utt", bad, SAMPLE_RATE, "שבור")
    missing = make_cut("missing-utt", tmp_path / "gone.flac", SAMPLE_RATE, "חסר")
    for cut, path in ((broken, bad), (missing, tmp_path / "gone.flac")):
        with pytest.raises(AudioError) as info:
            AsrBatchDataset()[flac_cuts + CutSet.from_cuts([cut])]
        assert isinstance(info.value, DataError)
        assert cut.id in str(info.value) and str(path) in str(info.value)
        assert "\n" not in str(info.value)  # one readable line, not Lhotse's multi-backend dump


def test_dataset_rejects_bad_speed_factors():
    with pytest.raises(ConfigError, match="speed_factors"):
        AsrBatchDataset(speed_factors=[0.9, 0.0])


def test_nan_audio_is_an_audio_error_naming_the_cut(tmp_path, flac_cuts):
    signal = np.full(SAMPLE_RATE, 0.1, np.float32)
    signal[100] = np.nan  # a float WAV keeps it; such a clip used to end as "lower the learning rates"
    sf.write(str(tmp_path / "nan.wav"), signal, SAMPLE_RATE, subtype="FLOAT")
    bad = make_cut("nan-utt", tmp_path / "nan.wav", SAMPLE_RATE, "שלום")
    with pytest.raises(AudioError, match="nan-utt") as info:
        AsrBatchDataset()[flac_cuts + CutSet.from_cuts([bad])]
    assert info.value.reason == "non_finite"


def test_stereo_audio_is_downmixed_like_everywhere_else(tmp_path):
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t), 0.1 * np.sin(2 * np.pi * 700 * t)], axis=1)
    sf.write(str(tmp_path / "stereo.wav"), stereo.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    cut = make_cut("stereo-utt", tmp_path / "stereo.wav", len(t), "שלום")
    batch = AsrBatchDataset()[CutSet.from_cuts([cut])]
    np.testing.assert_allclose(batch["audio"][0].numpy(), stereo.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(batch["audio"][0].numpy(), load_cut_audio(cut))  # the shared loader's result


def _clip(tmp_path, name: str, seconds: float):
    signal = np.full(int(seconds * SAMPLE_RATE), 0.05, np.float32)
    sf.write(str(tmp_path / f"{name}.flac"), signal, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return make_cut(name, tmp_path / f"{name}.flac", len(signal), "שלום")


def test_speed_perturbation_never_stretches_a_clip_past_the_window(tmp_path):
    long, short = _clip(tmp_path, "long", 29.0), _clip(tmp_path, "short", 20.0)
    dataset = AsrBatchDataset(speed_factors=[0.9], max_seconds=30.0)  # 0.9 would make the 29 s clip 32.2 s
    batch = dataset[CutSet.from_cuts([long, short])]
    assert batch["audio_lens"].tolist() == [29 * SAMPLE_RATE, round(20 * SAMPLE_RATE / 0.9)]  # short one stretched
    assert max(batch["durations"]) <= 30.0
    unguarded = AsrBatchDataset(speed_factors=[0.9])[CutSet.from_cuts([long])]
    assert unguarded["durations"][0] > 30.0  # what Whisper used to receive
    with pytest.raises(AudioError, match="too_long|31.00 s is longer than the model takes") as info:
        dataset[CutSet.from_cuts([_clip(tmp_path, "over", 31.0)])]
    assert info.value.reason == "too_long"


def test_dataset_from_recipe_holds_clips_to_the_family_window():
    from pathlib import Path

    from caspi.config import load_recipe
    from caspi.data.batches import dataset_from_recipe

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    assert dataset_from_recipe(load_recipe(recipes / "whisper-large-v3.yaml")).max_samples == 30 * SAMPLE_RATE
    assert dataset_from_recipe(load_recipe(recipes / "round2-2xa100.yaml")).max_samples is None  # no fixed window


def test_empty_training_transcripts_are_counted_and_named():
    texts = ["שלום", "", "   ", "\u05b8\u05b4", "\u200f", "טוב", "", " \u05b0 ", "\t"]  # niqqud / RLM only: empty too
    cuts = CutSet.from_cuts(make_cut(f"c{i}", "/nonexistent.flac", SAMPLE_RATE, t) for i, t in enumerate(texts))
    with pytest.raises(DataError) as info:
        check_targets(cuts, "train.jsonl.gz")
    message = str(info.value)
    assert "train.jsonl.gz: 7 of 9 training cuts have an empty transcript" in message
    assert "c1, c2, c3, c4, c6, ..." in message and "c7" not in message  # at most 5 examples
    check_targets(CutSet.from_cuts(c for c in cuts if c.id in ("c0", "c5")), "ok")  # nothing empty: no error


# ---------------------------------------------------------------- SpecAugment


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


def test_pipeline_from_recipe_follows_yaml_and_overrides():
    from pathlib import Path

    from caspi.config import load_recipe
    from caspi.data.batches import dataset_from_recipe, sampler_from_recipe, spec_augment_from_recipe

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    round2 = load_recipe(recipes / "round2-2xa100.yaml")
    cuts = metadata_cuts(200, high=14.0)
    batches = list(sampler_from_recipe(round2, cuts, world_size=2, rank=1))
    assert batches and max(len(b) for b in batches) == 2  # train.micro_batch
    assert sum(len(b) for b in batches) == 100  # rank 1 of 2 gets half
    assert dataset_from_recipe(round2).speed_factors == (0.9, 1.0, 1.1)
    assert dataset_from_recipe(round2, train=False).speed_factors is None
    augment = spec_augment_from_recipe(round2)
    assert augment is not None and augment.training

    bigger = load_recipe(recipes / "round2-2xa100.yaml", ["train.micro_batch=8", "train.max_batch_duration=40",
                                                          "augment.speed_factors=[1.0]",
                                                          "augment.spec_augment.enabled=false"])
    batches = list(sampler_from_recipe(bigger, cuts))
    assert max(len(b) for b in batches) == 8
    # Lhotse checks the limit before adding a cut, so one batch can overshoot by a little (batches.py notes).
    assert all(len(b) * max(c.duration for c in b) <= 40 * 1.05 for b in batches)
    assert dataset_from_recipe(bigger).speed_factors is None
    assert spec_augment_from_recipe(bigger) is None
