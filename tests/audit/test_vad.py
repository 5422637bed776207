"""Batched silero-vad: the same probabilities and segments as silero clip by clip, and sane numbers on speech,
silence and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caspi.audit.vad import vad_measures
from caspi.data import vad
from caspi.data import synth
from caspi.data.cuts import cut_domain, read_manifest
from caspi.errors import ConfigError, DataError
from caspi.testing import planted_errors, torch_threads

SR = vad.SAMPLE_RATE


@pytest.fixture(scope="session")
def model():
    return vad.load_vad_model()


@pytest.fixture(scope="session")
def silero(model):
    """silero_vad's own functions, imported after `load_vad_model` so its set_num_threads(1) is already undone."""
    import silero_vad

    return silero_vad


@pytest.fixture(scope="session")
def corpus(synth_corpus):
    """The shared corpus's 24 training clips, 6 per domain, 6 of them with a planted error (each kind once, so one is
    silence_or_noise): [(cut, audio (T,), planted kind or None)]."""
    planted = planted_errors(synth_corpus.out_dir)
    return [
        (cut, cut.load_audio()[0], planted.get(cut.id, {}).get("kind"))
        for cut in read_manifest(synth_corpus.train_manifest)
    ]


def _silero_alone(model, clip: np.ndarray) -> np.ndarray:
    """silero's own loop (get_speech_timestamps): reset, then one 512-sample window per call, last one zero-padded."""
    model.reset_states()
    x = torch.from_numpy(clip)
    probs = []
    with torch.no_grad(), torch_threads(1):  # silero's default; one-window calls crawl on 2 threads of a busy machine
        for start in range(0, len(x), vad.WINDOW):
            chunk = x[start : start + vad.WINDOW]
            chunk = torch.nn.functional.pad(chunk, (0, vad.WINDOW - len(chunk)))
            probs.append(model(chunk, SR).item())
    return np.array(probs, dtype=np.float32)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spectrum[1:] /= np.sqrt(freqs[1:] / freqs[1])
    spectrum[0] = 0.0
    x = np.fft.irfft(spectrum, n)
    return (x / x.std()).astype(np.float32)


def _with_silence(clip: np.ndarray, before_s: float, after_s: float, rng: np.random.Generator) -> np.ndarray:
    """The clip with a -70 dBFS noise floor before and after it."""
    floor = lambda s: (10 ** (-70 / 20) * rng.standard_normal(int(s * SR))).astype(np.float32)  # noqa: E731
    return np.concatenate([floor(before_s), clip, floor(after_s)])


# ---------------------------------------------------------------------------------------------------------------
# Batched probabilities == silero alone


@pytest.mark.espeak
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batched_probabilities_match_silero_clip_by_clip(corpus, model, batch_size):
    rng = np.random.default_rng(0)
    clips = [x for _, x, _ in corpus[:12]]
    # Lengths that are not multiples of 512, a one-window clip, and a long one that pads every other clip's batch.
    clips += [rng.standard_normal(300).astype(np.float32) * 0.1, _with_silence(clips[0], 3.0, 4.0, rng)]
    batched = vad.speech_probabilities(clips, model=model, batch_size=batch_size)
    for i, (clip, probs) in enumerate(zip(clips, batched)):
        alone = _silero_alone(model, clip)
        assert probs.shape == alone.shape == (vad.num_windows(len(clip)),), i
        np.testing.assert_allclose(probs, alone, rtol=0, atol=3e-5, err_msg=f"clip {i}")  # measured ≤ 1.6e-5


def test_padded_tail_does_not_change_a_short_clip(model):
    rng = np.random.default_rng(1)
    short = (0.1 * rng.standard_normal(4000)).astype(np.float32)
    long = (0.5 * _pink(SR * 5, rng)).astype(np.float32)
    together = vad.speech_probabilities([short, long], model=model, batch_size=2)
    np.testing.assert_allclose(together[0], _silero_alone(model, short), rtol=0, atol=3e-5)
    assert len(together[0]) == 8 and len(together[1]) == vad.num_windows(SR * 5)


def test_input_shapes_and_empty_clips(model):
    x = (0.01 * np.random.default_rng(2).standard_normal(2000)).astype(np.float64)
    flat, channel, empty = vad.speech_probabilities([x, x[None, :], np.zeros(0)], model=model)
    assert flat.dtype == np.float32 and flat.shape == (4,)
    np.testing.assert_array_equal(flat, channel)
    assert empty.shape == (0,)
    assert vad.speech_probabilities([], model=model) == []
    with pytest.raises(DataError, match="clip 0: expected mono"):
        vad.speech_probabilities([np.zeros((2, 1000))], model=model)
    with pytest.raises(ConfigError, match="batch_size"):
        vad.speech_probabilities([x], model=model, batch_size=0)


def test_thread_count_is_left_as_the_caller_set_it(model):
    before = torch.get_num_threads()
    vad.load_vad_model()
    vad.speech_probabilities([np.zeros(SR, dtype=np.float32)], model=model, num_threads=1)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------------------------------------------
# Segments == silero's rules


def _random_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smoothed random walk in [0, 1]: runs of speech and silence with flicker around the thresholds."""
    walk = np.cumsum(rng.normal(0, 0.25, n))
    return np.clip(0.5 + 0.4 * np.sin(walk) + rng.normal(0, 0.08, n), 0.0, 1.0)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"threshold": 0.3, "min_silence_ms": 300},
        {"threshold": 0.6, "neg_threshold": 0.55, "min_speech_ms": 50, "speech_pad_ms": 100},
        {"threshold": 0.12, "min_speech_ms": 0, "min_silence_ms": 0, "speech_pad_ms": 0},
    ],
)
def test_segments_equal_silero_from_the_same_probabilities(silero, params):
    if not hasattr(silero, "get_speech_timestamps_from_probs"):
        pytest.skip("this silero-vad has no get_speech_timestamps_from_probs")
    rng = np.random.default_rng(3)
    names = {"min_speech_ms": "min_speech_duration_ms", "min_silence_ms": "min_silence_duration_ms"}
    theirs_params = {names.get(k, k): v for k, v in params.items()}
    for trial in range(200):
        probs = _random_probs(rng, int(rng.integers(0, 400)))
        length = len(probs) * vad.WINDOW - int(rng.integers(0, vad.WINDOW)) if len(probs) else 0
        ours = vad.speech_segments(probs, num_samples=length, **params)
        theirs = silero.get_speech_timestamps_from_probs(
            probs.tolist(), sampling_rate=SR, audio_length_samples=length, **theirs_params
        )
        assert [(round(s * SR), round(e * SR)) for s, e in ours] == [(d["start"], d["end"]) for d in theirs], trial


def _flat(segments: list[tuple[float, float]]) -> list[float]:
    return [t for segment in segments for t in segment]


def test_segment_rules_by_hand():
    w = vad.WINDOW_S
    speech, quiet = [0.9] * 20, [0.0] * 10  # 640 ms of speech, 320 ms of silence
    # One segment, padded 30 ms each side, clipped at the clip's start and end.
    assert _flat(vad.speech_segments(np.array(quiet + speech + quiet))) == pytest.approx([10 * w - 0.03, 30 * w + 0.03])
    assert vad.speech_segments(np.array(speech)) == [(0.0, 20 * w)]
    # A 64 ms dip (< 100 ms min silence) does not split; a 320 ms one does.
    assert len(vad.speech_segments(np.array(speech + [0.0] * 2 + speech))) == 1
    assert len(vad.speech_segments(np.array(speech + quiet + speech))) == 2
    # Windows between neg_threshold (0.35) and threshold neither start nor end speech.
    assert vad.speech_segments(np.array([0.4] * 40)) == []
    assert _flat(vad.speech_segments(np.array(speech + [0.4] * 20 + quiet))) == pytest.approx([0.0, 40 * w + 0.03])
    # Speech of 256 ms (> 250 ms) survives; 224 ms does not.
    assert len(vad.speech_segments(np.array(quiet + [0.9] * 8 + quiet))) == 1
    assert vad.speech_segments(np.array(quiet + [0.9] * 7 + quiet)) == []


@pytest.mark.espeak
def test_segments_match_get_speech_timestamps_on_speech_with_silence_around(corpus, model, silero):
    rng = np.random.default_rng(4)
    picks = [x for cut, x, kind in corpus if kind is None][:8]
    clips = [_with_silence(x, rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5), rng) for x in picks]
    probs = vad.speech_probabilities(clips, model=model)
    for i, (clip, p) in enumerate(zip(clips, probs)):
        ours = vad.speech_segments(p, num_samples=len(clip))
        with torch_threads(1):  # time_resolution=3: silero rounds seconds to 0.1 s by default
            theirs = silero.get_speech_timestamps(
                torch.from_numpy(clip), model, sampling_rate=SR, return_seconds=True, time_resolution=3
            )
        assert len(ours) == len(theirs), (i, ours, theirs)
        for (start, end), d in zip(ours, theirs):
            assert abs(start - d["start"]) <= vad.WINDOW_S and abs(end - d["end"]) <= vad.WINDOW_S, (i, ours, theirs)


# ---------------------------------------------------------------------------------------------------------------
# Measures on speech, silence and noise


@pytest.mark.espeak
def test_measures_on_synthetic_speech_by_domain(corpus, model):
    measures = vad_measures([x for _, x, _ in corpus], model=model)
    by_domain: dict[str, list[float]] = {}
    for (cut, x, kind), m in zip(corpus, measures):
        assert m["duration_s"] == pytest.approx(len(x) / SR)
        assert m["speech_coverage"] == pytest.approx(m["speech_s"] / m["duration_s"])
        if m["segments"]:
            assert 0.0 <= m["first_speech_s"] < m["last_speech_s"] <= m["duration_s"]
        else:
            assert m["first_speech_s"] is None and m["last_speech_s"] is None and m["speech_s"] == 0
        if kind == "silence_or_noise":  # the planted error the vad scorer exists for
            assert m["speech_coverage"] == 0.0, cut.id
        elif kind is None:
            by_domain.setdefault(cut_domain(cut), []).append(m["speech_coverage"])
    assert [kind for _, _, kind in corpus].count("silence_or_noise") == 1
    assert set(by_domain) == set(synth.DOMAINS)
    # Noise (broadcast, whatsapp, d1) does not hide espeak-ng speech from silero. Per clip, coverage varies: on a
    # 400-clip corpus ~1.5 % of clean clips fell under 0.2 (silero scores parts of espeak-ng's plain voice low).
    for domain, coverage in by_domain.items():
        assert np.median(coverage) > 0.6, (domain, coverage)
    everything = np.concatenate(list(by_domain.values()))
    assert np.mean(everything > 0.3) >= 0.85, everything


def test_measures_on_silence_and_noise(model):
    rng = np.random.default_rng(5)
    n = 3 * SR
    clips = {
        "digital silence": np.zeros(n, dtype=np.float32),
        "-70 dBFS floor": (10 ** (-70 / 20) * rng.standard_normal(n)).astype(np.float32),
        "white 0.01": (0.01 * rng.standard_normal(n)).astype(np.float32),
        "white 0.3": (0.3 * rng.standard_normal(n)).astype(np.float32),
        "pink 0.05": 0.05 * _pink(n, rng),
        "pink 0.3": 0.3 * _pink(n, rng),
        "one second": np.zeros(SR, dtype=np.float32),
    }
    measures = vad_measures(list(clips.values()), model=model)
    for name, m in zip(clips, measures):
        assert m["speech_coverage"] == 0.0 and m["segments"] == 0, (name, m)
        assert m["first_speech_s"] is None and m["last_speech_s"] is None
    assert measures[-1]["duration_s"] == 1.0


def test_measures_empty_clip_and_sample_rate(model):
    (m,) = vad_measures([np.zeros(0, dtype=np.float32)], model=model)
    assert m == {
        "speech_s": 0.0,
        "duration_s": 0.0,
        "speech_coverage": 0.0,
        "first_speech_s": None,
        "last_speech_s": None,
        "segments": 0,
        "max_speech_prob": 0.0,
    }
    with pytest.raises(ConfigError, match="16000 Hz"):
        vad_measures([np.zeros(8000, dtype=np.float32)], sample_rate=8000, model=model)


def test_max_speech_prob_separates_noise_from_speech_that_makes_no_segment(model):
    """What the `vad` scorer's no_speech rule reads: noise and silence peak far below 0.2."""
    rng = np.random.default_rng(1)
    noise = (0.05 * rng.standard_normal(32000)).astype(np.float32)
    silence = np.zeros(16000, dtype=np.float32)
    m_noise, m_silence = vad_measures([noise, silence], model=model)
    assert m_noise["max_speech_prob"] < 0.2 and m_silence["max_speech_prob"] < 0.2
