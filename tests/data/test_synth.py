"""The synthetic Hebrew corpus: files, formats, determinism, domains and planted errors."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest
import soundfile as sf

from caspi.data import synth
from caspi.data.cuts import cut_domain, cut_text, read_manifest
from caspi.data.text import for_training
from caspi.errors import ConfigError, DependencyError
from caspi.testing import SHARED_CORPUS, planted_errors, synthesize_corpus

# The shared corpus (tests/conftest.py's `synth_corpus`): 0.25 * 24 = 6 planted errors, each kind exactly once.
N_TRAIN, N_EVAL, SEED, RATE = (SHARED_CORPUS[key] for key in ("n_train", "n_eval", "seed", "error_rate"))
HEBREW_LETTER = re.compile("[\u05d0-\u05ea]")
NIQQUD_OR_DIGIT = re.compile("[\u0591-\u05c7\\d]")
ID = re.compile(r"^(train|eval)-(studio|broadcast|whatsapp|d1)-\d{6}$")


def _audio(cut) -> np.ndarray:
    samples, _ = sf.read(cut.recording.sources[0].source, dtype="float64")
    return samples


def _by_id(path) -> dict:
    return {c.id: c for c in read_manifest(path)}


def _frame_rms(x: np.ndarray, frame: int = 320) -> np.ndarray:  # 20 ms frames at 16 kHz
    n = len(x) // frame
    return np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))


def _high_band_share(x: np.ndarray, cutoff_hz: float = 4100.0) -> float:
    """Share of the signal's energy above cutoff_hz."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    return float(power[freqs > cutoff_hz].sum() / power.sum())


@pytest.fixture(scope="module")
def planted(synth_corpus):
    return synth_corpus


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The shared corpus's clips without planted errors: what each planted clip was before its error."""
    return synthesize_corpus(tmp_path_factory.mktemp("clean"), error_rate=0.0)


@pytest.mark.espeak
def test_files_formats_and_texts(clean):
    assert clean.n_train == N_TRAIN and clean.n_eval == N_EVAL and clean.n_planted == 0
    assert clean.planted_errors.read_text() == ""
    for path, n, split in ((clean.train_manifest, N_TRAIN, "train"), (clean.eval_manifest, N_EVAL, "eval")):
        cuts = list(read_manifest(path))
        assert len(cuts) == n
        assert {cut_domain(c) for c in cuts} == set(synth.DOMAINS)
        for cut in cuts:
            match = ID.match(cut.id)
            assert match and match.group(1) == split and match.group(2) == cut_domain(cut)
            source = cut.recording.sources[0].source
            assert source == str(clean.audio_dir / f"{cut.id}.flac")
            info = sf.info(source)
            assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
            assert info.frames == cut.recording.num_samples
            assert cut.duration == pytest.approx(info.frames / 16000, abs=1e-9)
            text = cut_text(cut)
            assert HEBREW_LETTER.search(text) and not NIQQUD_OR_DIGIT.search(text)
            assert 3 <= len(text.split()) <= 8
            assert text[-1] in ".?" and for_training(text) == text
    durations = [c.duration for c in read_manifest(clean.train_manifest)]
    assert 1.5 < np.mean(durations) < 3.5  # seconds; espeak-ng Hebrew at 130-230 wpm
    assert clean.train_seconds == pytest.approx(sum(durations))


@pytest.mark.espeak
def test_domains_have_their_acoustic_conditions(clean):
    cuts = list(read_manifest(clean.train_manifest)) + list(read_manifest(clean.eval_manifest))
    by_domain = {d: [_audio(c) for c in cuts if cut_domain(c) == d] for d in synth.DOMAINS}
    # Narrowband: nothing above 4 kHz; the wideband studio speech has fricatives up there.
    assert max(_high_band_share(x) for x in by_domain["whatsapp"]) < 1e-5
    assert min(_high_band_share(x) for x in by_domain["studio"]) > 1e-3
    # espeak-ng's pauses stay digital silence in the studio; broadcast always has its noise and music bed.
    assert all(_frame_rms(x).min() < 1e-4 for x in by_domain["studio"])
    assert all(_frame_rms(x).min() > 1e-3 for x in by_domain["broadcast"])
    # d1 speaks faster: more characters per second than the studio.
    rate = {
        d: np.mean([len(cut_text(c)) / c.duration for c in cuts if cut_domain(c) == d]) for d in ("studio", "d1")
    }
    assert rate["d1"] > 1.15 * rate["studio"]


@pytest.mark.espeak
def test_same_seed_is_identical_and_another_seed_differs(planted, tmp_path):
    def snapshot(summary):
        # Manifests hold absolute audio paths: the corpus's own folder is written alike in every snapshot.
        folder = str(summary.out_dir).encode()
        manifests = [gzip.decompress(p.read_bytes()).replace(folder, b"<corpus>")
                     for p in (summary.train_manifest, summary.eval_manifest)]
        audio = {p.name: p.read_bytes() for p in sorted(summary.audio_dir.glob("*.flac"))}
        return manifests, audio, summary.planted_errors.read_bytes()

    before = snapshot(planted)
    # Another folder (the shared corpus is read-only), one worker instead of two: nothing else may change.
    again = synth.synthesize(tmp_path / "again", N_TRAIN, N_EVAL, seed=SEED, error_rate=RATE, workers=1,
                             progress=False)
    assert snapshot(again) == before

    other = synth.synthesize(tmp_path / "other", N_TRAIN, N_EVAL, seed=SEED + 1, error_rate=RATE, workers=2,
                             progress=False)
    texts = [cut_text(c) for c in read_manifest(planted.train_manifest)]
    other_texts = [cut_text(c) for c in read_manifest(other.train_manifest)]
    assert sum(a != b for a, b in zip(texts, other_texts)) > N_TRAIN // 2
    assert snapshot(other)[1].keys() == before[1].keys()
    assert snapshot(other)[1] != before[1]


@pytest.mark.espeak
def test_planted_errors_alter_what_they_say(planted, clean):
    records = planted_errors(planted.out_dir)
    assert planted.n_planted == len(records) == round(RATE * N_TRAIN)
    assert sorted(r["kind"] for r in records.values()) == sorted(synth.ERROR_KINDS)
    train, clean_train = _by_id(planted.train_manifest), _by_id(clean.train_manifest)
    assert set(records) <= set(train)
    assert not any("planted" in json.dumps(c.custom) for c in train.values())  # the manifest gives nothing away

    for cut_id, record in records.items():
        cut, ref = train[cut_id], clean_train[cut_id]
        text, ref_text = cut_text(cut), cut_text(ref)
        audio, ref_audio = _audio(cut), _audio(ref)
        kind = record["kind"]
        if kind in ("silence_or_noise", "truncated_audio"):
            assert text == ref_text
        else:
            assert np.array_equal(audio, ref_audio) and text != ref_text
            assert record["original_text"] == ref_text
        if kind == "wrong_transcript":
            assert record["source_id"] != cut_id and text == cut_text(clean_train[record["source_id"]])
        elif kind == "truncated_transcript":
            words = ref_text.split()
            kept = words[: max(1, len(words) // 2)]
            assert text.split()[:-1] == kept[:-1] and text.split()[-1] == kept[-1].rstrip(",")
        elif kind == "appended_words":
            extra = record["appended"].split()
            assert len(text.split()) == len(ref_text.split()) + len(extra) >= len(ref_text.split()) + 2
            assert text.startswith(ref_text[:-1]) and record["appended"] in text
        elif kind == "english_text":
            assert text.isascii() and re.search("[A-Za-z]{3}", text) and not HEBREW_LETTER.search(text)
        elif kind == "truncated_audio":
            assert len(audio) == len(ref_audio) // 2
            assert np.array_equal(audio, ref_audio[: len(audio)])
            assert record["seconds"] == pytest.approx(cut.duration)
            assert record["original_seconds"] == pytest.approx(ref.duration)
        elif kind == "silence_or_noise":
            assert len(audio) == len(ref_audio) and record["detail"] in ("silence", "noise")
            _check_replacement(audio, ref_audio, record["detail"])

    # Unplanted training clips and the whole eval split are exactly the clean corpus.
    for cut_id in set(train) - set(records):
        assert cut_text(train[cut_id]) == cut_text(clean_train[cut_id])
        assert np.array_equal(_audio(train[cut_id]), _audio(clean_train[cut_id]))
    clean_eval = _by_id(clean.eval_manifest)
    for cut_id, cut in _by_id(planted.eval_manifest).items():
        assert cut_text(cut) == cut_text(clean_eval[cut_id])
        assert np.array_equal(_audio(cut), _audio(clean_eval[cut_id]))


def _check_replacement(audio: np.ndarray, speech: np.ndarray, detail: str) -> None:
    """Replaced audio is a faint floor (silence) or stationary noise, unlike speech's bursts and pauses."""
    rms = _frame_rms(audio)
    if detail == "silence":
        assert rms.max() < 1e-3
    else:
        assert rms.mean() > 0.01
        assert rms.std() / rms.mean() < 0.3  # stationary
        speech_rms = _frame_rms(speech)
        assert speech_rms.std() / speech_rms.mean() > 0.5  # speech for contrast


@pytest.mark.parametrize("detail", ["silence", "noise"])
def test_replacement_audio(detail):
    rng = np.random.default_rng(0)
    speech = np.repeat(rng.uniform(0, 1, 40) > 0.5, 800) * rng.standard_normal(32000) * 0.2  # bursts and pauses
    _check_replacement(synth._replacement_audio(detail, 32000, rng), speech, detail)


def test_planted_kinds_count_and_spread():
    assert synth.planted_kinds(0, 100, 0.0) == {}
    kinds = synth.planted_kinds(3, 100, 0.15)
    assert len(kinds) == 15 and all(0 <= i < 100 for i in kinds)
    counts = [list(kinds.values()).count(k) for k in synth.ERROR_KINDS]
    assert max(counts) - min(counts) <= 1 and min(counts) >= 2
    assert len(synth.planted_kinds(0, 7, 1.0)) == 7
    assert synth.planted_kinds(3, 100, 0.15) == kinds and synth.planted_kinds(4, 100, 0.15) != kinds


def test_sentences():
    batch = synth.sentences(200, seed=0)
    assert batch == synth.sentences(200, seed=0) and batch[:50] == synth.sentences(50, seed=0)
    assert batch != synth.sentences(200, seed=1)
    assert len(set(batch)) > 190
    for text in batch:
        assert 3 <= len(text.split()) <= 8 and HEBREW_LETTER.search(text) and not NIQQUD_OR_DIGIT.search(text)
        assert text[-1] in ".?"
    assert any("," in t for t in batch) and any(t.endswith("?") for t in batch)
    assert all(1 <= len(t.split()) <= 2 for t in synth.sentences(50, seed=0, min_words=1, max_words=2))
    with pytest.raises(ConfigError, match="20-30 words"):
        synth.sentences(1, min_words=20, max_words=30)


def test_lexicon_is_unvocalised_hebrew():
    lexicon = synth._lexicon()
    assert sum(len(entries) for entries in lexicon.slots.values()) >= 300
    for slot, entries in lexicon.slots.items():
        for entry in entries:
            assert re.fullmatch("[\u05d0-\u05ea]+( [\u05d0-\u05ea]+)*", entry), (slot, entry)
    assert all(e.isascii() for e in lexicon.english)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": -1},
        {"n_eval": 1.5},
        {"n_train": 0, "n_eval": 0},
        {"n_train": synth.MAX_CLIPS},
        {"seed": -3},
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"error_rate": float("nan")},
        {"error_rate": "0.1"},
        {"workers": 0},
        {"min_words": 0},
        {"min_words": 5, "max_words": 4},
        {"domains": ("studio", "radio")},
        {"domains": ()},
        {"domains": ("studio", "studio")},
        {"domains": "studio"},
    ],
)
def test_invalid_arguments(tmp_path, kwargs):
    args = {"out_dir": tmp_path, "n_train": 4, "n_eval": 4, **kwargs}
    with pytest.raises(ConfigError) as info:
        synth.synthesize(**args, progress=False)
    assert next(iter(kwargs)) in str(info.value)
    assert not (tmp_path / "audio").exists()


def test_out_dir_that_is_a_file(tmp_path):
    path = tmp_path / "corpus"
    path.write_text("not a directory")
    with pytest.raises(ConfigError, match="not a directory"):
        synth.synthesize(path, 4, 4, progress=False)


def test_missing_espeak_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="apt-get install espeak-ng"):
        synth.synthesize(tmp_path, 4, 4, progress=False)


@pytest.mark.espeak
def test_a_subset_of_domains_in_equal_shares(tmp_path):
    """Round 1 of the demo is studio only; `domains` cycles over the names given, and sample i keeps the sentence
    the same seed gives it with all four domains."""
    studio = synth.synthesize(tmp_path / "studio", 3, 0, seed=4, domains=("studio",), progress=False)
    two = synth.synthesize(tmp_path / "two", 4, 0, seed=4, domains=("whatsapp", "studio"), progress=False)
    assert [cut_domain(c) for c in read_manifest(studio.train_manifest)] == ["studio"] * 3
    cuts = sorted(read_manifest(two.train_manifest), key=lambda c: c.id[-6:])  # by index
    assert [c.id for c in cuts] == ["train-whatsapp-000000", "train-studio-000001", "train-whatsapp-000002",
                                    "train-studio-000003"]
    assert cut_text(cuts[1]) == synth._plan_clip(4, "train", 1, synth.MIN_WORDS, synth.MAX_WORDS).text


@pytest.mark.espeak
def test_progress_bar_and_speak(tmp_path, capsys):
    synth.synthesize(tmp_path / "quiet", 4, 0, progress=False)
    assert capsys.readouterr().err == ""
    synth.synthesize(tmp_path / "loud", 4, 0, progress=True)
    err = capsys.readouterr().err  # not a terminal: plain lines (caspi.progress), no redrawn bar
    assert "synth  done: 4 clips in " in err and "\r" not in err
    slow, fast = synth.speak("שלום, מה שלומך?", speed=120), synth.speak("שלום, מה שלומך?", speed=240)
    assert slow.dtype == np.float32 and slow.ndim == 1 and np.abs(slow).max() > 0.05
    assert len(slow) > 1.3 * len(fast)
