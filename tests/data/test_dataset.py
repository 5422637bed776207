"""Tests for caspi.data.dataset: speed perturbation, collation of real audio files, the window guard, empty
transcripts, the dataset from a recipe."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet
from torch.utils.data import DataLoader

from caspi.config import load_recipe
from caspi.data.audio import SAMPLE_RATE
from caspi.data.cuts import cut_domain, cut_text, load_cut_audio, make_cut
from caspi.data.dataset import AsrBatchDataset, check_targets, dataset_from_recipe, speed_factor
from caspi.data.sampling import make_sampler
from caspi.errors import AudioError, ConfigError, DataError
from caspi.models.families import get_family

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def window(recipe) -> float | None:
    """The model family's window, seconds: what the training loop passes as `max_seconds`."""
    return get_family(recipe.model.family).max_audio_seconds


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
    whisper = load_recipe(RECIPES / "whisper-large-v3.yaml")
    assert dataset_from_recipe(whisper, max_seconds=window(whisper)).max_samples == 30 * SAMPLE_RATE
    round2 = load_recipe(RECIPES / "round2-2xa100.yaml")
    assert dataset_from_recipe(round2, max_seconds=window(round2)).max_samples is None  # no fixed window


def test_empty_training_transcripts_are_counted_and_named():
    texts = ["שלום", "", "   ", "\u05b8\u05b4", "\u200f", "טוב", "", " \u05b0 ", "\t"]  # niqqud / RLM only: empty too
    cuts = CutSet.from_cuts(make_cut(f"c{i}", "/nonexistent.flac", SAMPLE_RATE, t) for i, t in enumerate(texts))
    with pytest.raises(DataError) as info:
        check_targets(cuts, "train.jsonl.gz")
    message = str(info.value)
    assert "train.jsonl.gz: 7 of 9 training cuts have an empty transcript" in message
    assert "c1, c2, c3, c4, c6, ..." in message and "c7" not in message  # at most 5 examples
    check_targets(CutSet.from_cuts(c for c in cuts if c.id in ("c0", "c5")), "ok")  # nothing empty: no error


# --- wired from the recipe ---------------------------------------------------------------------------------------


def test_dataset_from_recipe_follows_yaml_and_overrides():
    round2 = load_recipe(RECIPES / "round2-2xa100.yaml")
    assert dataset_from_recipe(round2, max_seconds=window(round2)).speed_factors == (0.9, 1.0, 1.1)
    assert dataset_from_recipe(round2, train=False, max_seconds=window(round2)).speed_factors is None
    off = load_recipe(RECIPES / "round2-2xa100.yaml", ["augment.speed_factors=[1.0]"])
    assert dataset_from_recipe(off, max_seconds=window(off)).speed_factors is None
