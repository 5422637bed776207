"""Audio decoding: any rate → 16 kHz mono float32; every failure is an AudioError naming the file and a reason."""

import numpy as np
import pytest
import soundfile as sf

from caspi.data.audio import SAMPLE_RATE, decode_audio, resample, write_flac
from caspi.errors import AudioError
from caspi.testing import tone


def test_stereo_44k_wav_becomes_16k_mono(tmp_path):
    left, right = tone(1.0, 440.0, 44_100), tone(1.0, 880.0, 44_100)
    path = tmp_path / "a b.wav"  # a space in the name, as in real corpora
    sf.write(path, np.stack([left, right], axis=1), 44_100, subtype="FLOAT")
    samples, orig = decode_audio(path)
    assert orig == 44_100 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - SAMPLE_RATE) <= 1
    # The average of two tones keeps both: its peak is below either channel's 0.3 amplitude sum.
    expected = resample((left + right) / 2, 44_100)
    np.testing.assert_allclose(samples, expected, atol=1e-5)


def test_bytes_and_flac_round_trip(tmp_path):
    path = tmp_path / "x.flac"
    write_flac(path, tone(1.0))
    samples, orig = decode_audio(path.read_bytes(), name="row 7")
    assert orig == SAMPLE_RATE and len(samples) == SAMPLE_RATE
    np.testing.assert_allclose(samples, tone(1.0), atol=1e-4)  # 16-bit quantisation


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "unreadable"),
        (lambda p: sf.write(p, np.zeros((0,), np.float32), SAMPLE_RATE, subtype="FLOAT"), "empty"),
        (lambda p: sf.write(p, np.full(1600, np.nan, np.float32), SAMPLE_RATE, subtype="FLOAT"), "non_finite"),
        (
            lambda p: sf.write(p, np.r_[np.zeros(100), [np.inf]].astype(np.float32), SAMPLE_RATE, subtype="FLOAT"),
            "non_finite",
        ),
        (lambda p: None, "unreadable"),  # file never written: missing
    ],
)
def test_bad_audio_is_named(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        decode_audio(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fmt, subtype, suffix", [("OGG", "VORBIS", ".ogg"), ("MP3", "MPEG_LAYER_III", ".mp3")])
def test_compressed_formats_decode(tmp_path, fmt, subtype, suffix):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {fmt}")
    path = tmp_path / f"x{suffix}"
    sf.write(path, tone(1.0, 440.0, 22_050), 22_050, format=fmt, subtype=subtype)
    samples, orig = decode_audio(path)
    assert orig == 22_050
    # Lossy codecs add priming/padding samples: the length is close, the tone is there.
    assert abs(len(samples) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert 0.15 < float(np.sqrt(np.mean(samples**2))) < 0.25  # RMS of a 0.3-amplitude sine ≈ 0.21
