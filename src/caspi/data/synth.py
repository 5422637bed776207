"""The synthetic Hebrew corpus: espeak-ng speech in four acoustic domains, with planted errors for the audit.

`synthesize(out_dir, n_train, n_eval, ...)` writes

    out_dir/audio/<id>.flac          16 kHz mono, one clip per sentence
    out_dir/train.jsonl.gz           Lhotse CutSet (caspi.data.cuts layout), planted errors included
    out_dir/eval.jsonl.gz            Lhotse CutSet, never corrupted
    out_dir/planted_errors.jsonl     the answer key: one JSON line per planted error (`id`, `kind`, details)

Sentences are drawn from the word lists and templates in `lexicon/` (unvocalised Hebrew: espeak-ng reads niqqud
out as diacritic names and drops digits), 3-8 words with commas and a final period or question mark.

Domains (named after the seed eval sets) take equal shares of each split: sample i has domain domains[i % len(domains)],
all four unless `domains` names fewer (Round 1 of the demo: studio only). The same seed gives the same sentence and
voice to sample i whatever the domains, so two corpora meant to differ (Round 1's and Round 2's) take two seeds.
    studio     plain `he` voice, clean
    broadcast  plain `he` voice + pink noise and a synthetic chord "music bed", 8-18 dB SNR
    whatsapp   plain `he` voice through an 8 kHz narrowband channel: noise, overdriven clipping and mu-law
               quantisation at 8 kHz, then back to 16 kHz (nothing above 4 kHz)
    d1         other espeak-ng voice variants (`he+m3`, `he+klatt` ...) and faster speech, faint noise
Speed and pitch vary per sample in every domain (`VOICES`).

Determinism: every random choice for sample i of a split comes from `numpy.random.default_rng([seed, split_code,
i, stream])`, and the planted-error draw from `[seed, PLANT_STREAM]`, so the same arguments give identical text
and audio whatever the worker scheduling, and planting errors does not change any other sample. Manifests hold
absolute audio paths (Lhotse resolves relative ones against the working directory); `write_manifest` pins the
gzip timestamp, so the same arguments give byte-identical manifests.

Planted errors (training split only; exactly round(error_rate * n_train), kinds cycled so that all six appear
once the count reaches six): the manifest holds the corrupted text or audio, nothing in it marks the sample.
"""

from __future__ import annotations

import math
import numbers
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path

import numpy as np
from lhotse import CutSet

from caspi.data.audio import SAMPLE_RATE, decode_audio, resample, write_flac
from caspi.data.checks import is_int
from caspi.data.cuts import make_cut, write_jsonl, write_manifest
from caspi.data.text import for_training
from caspi.errors import ConfigError, DataError, DependencyError
from caspi.progress import progress as show_progress

DOMAINS = ("studio", "broadcast", "whatsapp", "d1")
ERROR_KINDS = (
    "wrong_transcript",
    "truncated_transcript",
    "appended_words",
    "silence_or_noise",
    "truncated_audio",
    "english_text",
)
SPLITS = {"train": 0, "eval": 1}  # split name -> split code in the RNG seed
MIN_WORDS, MAX_WORDS = 3, 8  # default sentence length, words
MAX_CLIPS = 1_000_000  # per split: ids are zero-padded to 6 digits
ESPEAK = "espeak-ng"
INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"

# espeak-ng voice variants (`espeak-ng --voices=variant`) that stay intelligible in Hebrew; all are deterministic.
_D1_VARIANTS = (
    "m1",
    "m3",
    "m4",
    "m7",
    "f1",
    "f2",
    "f3",
    "f5",
    "klatt",
    "klatt3",
    "Annie",
    "Andy",
    "linda",
    "travis",
)
_D1_VOICES = tuple(f"he+{v}" for v in _D1_VARIANTS)

# Per domain: (voices, speed range in words per minute, pitch range 0-99), bounds inclusive. The three channel
# domains share the plain voice so they differ only by channel; d1 is the "other speakers, faster" domain.
VOICES: dict[str, tuple[tuple[str, ...], tuple[int, int], tuple[int, int]]] = {
    "studio": (("he",), (130, 170), (35, 65)),
    "broadcast": (("he",), (130, 170), (35, 65)),
    "whatsapp": (("he",), (130, 170), (35, 65)),
    "d1": (
        _D1_VOICES,
        (180, 230),
        (25, 75),
    ),
}

# Seed-sequence stream tags, so independent draws never share a generator.
_SENTENCE_STREAM = 2  # sentences(): [seed, 2, i]
_PLANT_STREAM = 3  # which training samples get which error: [seed, 3]
_AUDIO_STREAM = 7  # acoustic effects of sample i: [seed, split, i, 7]
_ERROR_STREAM = 8  # details of the error planted in sample i: [seed, 0, i, 8]

_NARROWBAND_SR = 8_000  # Hz; WhatsApp/telephone band
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote: paths, clip counts and seconds of audio per split."""

    out_dir: Path
    audio_dir: Path
    train_manifest: Path
    eval_manifest: Path
    planted_errors: Path
    n_train: int
    n_eval: int
    n_planted: int
    train_seconds: float
    eval_seconds: float


@dataclass(frozen=True)
class _Clip:
    """Everything needed to render and describe one sample (built in the main process, rendered by a worker)."""

    cut_id: str
    split: str
    index: int
    domain: str
    spoken: str  # the sentence espeak-ng says
    text: str  # the manifest transcript (differs from `spoken` only for planted transcript errors)
    voice: str
    speed: int  # words per minute
    pitch: int  # 0-99
    audio_error: str | None = None  # "silence", "noise" or "truncated" for planted audio errors


# ---------------------------------------------------------------------------------------------------------------
# Lexicon and sentences


@dataclass(frozen=True)
class _Template:
    text: str
    min_words: int
    max_words: int


@dataclass(frozen=True)
class _Lexicon:
    slots: dict[str, tuple[str, ...]]
    templates: tuple[_Template, ...]
    english: tuple[str, ...]


def _read_list(name: str) -> tuple[str, ...]:
    path = resources.files("caspi.data") / "lexicon" / f"{name}.txt"
    if not path.is_file():
        raise DataError(f"lexicon file {name}.txt is missing from caspi/data/lexicon (referenced by a template)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    entries = tuple(line for line in lines if line and not line.startswith("#"))
    if not entries:
        raise DataError(f"lexicon file {name}.txt has no entries")
    return entries


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    slots: dict[str, tuple[str, ...]] = {}
    templates = []
    for line in _read_list("templates"):
        names = _SLOT.findall(line)
        for name in names:
            if name not in slots:
                slots[name] = tuple(for_training(e) for e in _read_list(name))
        # A token holding slots adds (words in the entry - 1) per slot, so the range comes from the extreme entries.
        lengths = {name: [len(e.split()) for e in slots[name]] for name in names}
        base = len(line.split())
        templates.append(
            _Template(
                text=line,
                min_words=base + sum(min(lengths[n]) - 1 for n in names),
                max_words=base + sum(max(lengths[n]) - 1 for n in names),
            )
        )
    return _Lexicon(slots=slots, templates=tuple(templates), english=_read_list("english"))


def _fitting_templates(min_words: int, max_words: int) -> list[_Template]:
    """Templates that can produce a sentence of min_words..max_words words; ConfigError if there is none."""
    templates = _lexicon().templates
    fitting = [t for t in templates if t.min_words <= max_words and t.max_words >= min_words]
    if not fitting:
        lo = min(t.min_words for t in templates)
        hi = max(t.max_words for t in templates)
        raise ConfigError(f"no sentence template gives {min_words}-{max_words} words (templates give {lo}-{hi})")
    return fitting


def _sentence(rng: np.random.Generator, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> str:
    """One random sentence of min_words..max_words words (whitespace-separated tokens), in `for_training` form."""
    fitting = _fitting_templates(min_words, max_words)
    slots = _lexicon().slots
    # A filled template can still fall outside the range (multi-word phrases); redraw. The fitting templates
    # reach the range, so this ends in a few draws; the bound only guards against a broken lexicon.
    for _ in range(1000):
        template = fitting[int(rng.integers(len(fitting)))]
        text = _SLOT.sub(lambda m: slots[m.group(1)][int(rng.integers(len(slots[m.group(1)])))], template.text)
        if min_words <= len(text.split()) <= max_words:
            return for_training(text)
    raise DataError(f"lexicon templates never produced a {min_words}-{max_words} word sentence in 1000 draws")


def _check_word_range(min_words, max_words, problems: list[str]) -> None:
    if not is_int(min_words) or min_words < 1:
        problems.append(f"min_words must be an integer >= 1, got {min_words!r}")
    elif not is_int(max_words) or max_words < min_words:
        problems.append(f"max_words must be an integer >= min_words ({min_words}), got {max_words!r}")
    else:
        try:
            _fitting_templates(min_words, max_words)
        except ConfigError as exc:
            problems.append(str(exc))


def sentences(n: int, seed: int = 0, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """`n` random Hebrew sentences from the lexicon (unvocalised, punctuated, min_words..max_words words).

    Sentence i depends only on (seed, i), so `sentences(n, s)` is a prefix of `sentences(n + 1, s)`. The stream is
    independent of the corpus `synthesize` writes with the same seed.
    """
    problems: list[str] = []
    if not is_int(n) or n < 0:
        problems.append(f"n must be an integer >= 0, got {n!r}")
    if not is_int(seed) or seed < 0:
        problems.append(f"seed must be an integer >= 0, got {seed!r}")
    _check_word_range(min_words, max_words, problems)
    if problems:
        raise ConfigError("invalid arguments to sentences()", problems)
    return [_sentence(np.random.default_rng([seed, _SENTENCE_STREAM, i]), min_words, max_words) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Planning: which sentence, voice and error each sample gets (cheap, main process)


def _plan_clip(seed: int, split: str, index: int, min_words: int, max_words: int,
               domains: tuple[str, ...] = DOMAINS) -> _Clip:
    rng = np.random.default_rng([seed, SPLITS[split], index])
    domain = domains[index % len(domains)]
    text = _sentence(rng, min_words, max_words)
    voices, (speed_lo, speed_hi), (pitch_lo, pitch_hi) = VOICES[domain]
    return _Clip(
        cut_id=f"{split}-{domain}-{index:06d}",
        split=split,
        index=index,
        domain=domain,
        spoken=text,
        text=text,
        voice=voices[int(rng.integers(len(voices)))],
        speed=int(rng.integers(speed_lo, speed_hi + 1)),
        pitch=int(rng.integers(pitch_lo, pitch_hi + 1)),
    )


def planted_kinds(seed: int, n_train: int, error_rate: float) -> dict[int, str]:
    """Training index -> error kind for the round(error_rate * n_train) samples that get a planted error.

    Indices are drawn without replacement; kinds are cycled through ERROR_KINDS (counts differ by at most one)
    and shuffled, so every kind appears once six or more errors are planted.
    """
    count = round(error_rate * n_train)
    rng = np.random.default_rng([seed, _PLANT_STREAM])
    indices = sorted(int(i) for i in rng.choice(n_train, size=count, replace=False))
    kinds = [ERROR_KINDS[j % len(ERROR_KINDS)] for j in range(count)]
    order = rng.permutation(count)
    return {index: kinds[int(k)] for index, k in zip(indices, order)}


def _plant(clip: _Clip, kind: str, seed: int, train: list[_Clip]) -> tuple[_Clip, dict]:
    """The corrupted clip and its planted_errors.jsonl record. `train` holds the clean training clips."""
    rng = np.random.default_rng([seed, SPLITS["train"], clip.index, _ERROR_STREAM])
    record: dict = {"id": clip.cut_id, "kind": kind}
    if kind == "wrong_transcript":
        text, record["source_id"] = clip.spoken, None
        # Another utterance's sentence; a few redraws skip the rare one that says the same thing.
        for _ in range(20 if len(train) > 1 else 0):
            j = int(rng.integers(len(train) - 1))
            source = train[j + (j >= clip.index)]  # any index but this one
            if source.spoken != clip.spoken:
                text, record["source_id"] = source.spoken, source.cut_id
                break
        while text == clip.spoken:  # a one-sample corpus: borrow a fresh sentence
            text = _sentence(rng)
        record["original_text"] = clip.spoken
        return replace(clip, text=text), record
    if kind == "truncated_transcript":
        words = clip.spoken.split()
        kept = words[: max(1, len(words) // 2)]
        kept[-1] = kept[-1].rstrip(",")
        record["original_text"] = clip.spoken
        return replace(clip, text=" ".join(kept)), record
    if kind == "appended_words":
        pool = [w for slot in ("noun_m", "noun_f", "adj_m", "adj_f") for w in _lexicon().slots[slot]]
        extra = [pool[int(i)] for i in rng.integers(len(pool), size=int(rng.integers(2, 5)))]
        # Insert before the final period/question mark, so the text still looks like one sentence.
        body, end = (clip.spoken[:-1], clip.spoken[-1]) if clip.spoken[-1] in ".?" else (clip.spoken, "")
        record.update(original_text=clip.spoken, appended=" ".join(extra))
        return replace(clip, text=f"{body} {' '.join(extra)}{end}"), record
    if kind == "silence_or_noise":
        detail = ("silence", "noise")[int(rng.integers(2))]
        record["detail"] = detail
        return replace(clip, audio_error=detail), record
    if kind == "truncated_audio":
        return replace(clip, audio_error="truncated"), record  # durations are added after rendering
    if kind == "english_text":
        english = _lexicon().english
        record["original_text"] = clip.spoken
        return replace(clip, text=english[int(rng.integers(len(english)))]), record
    raise AssertionError(f"unknown error kind {kind}")


# ---------------------------------------------------------------------------------------------------------------
# Rendering: espeak-ng, the domain's channel, planted audio errors (worker threads)


def _require_espeak() -> str:
    """Path of the espeak-ng binary, checked to have the Hebrew voice; DependencyError otherwise."""
    binary = shutil.which(ESPEAK)
    if binary is None:
        raise DependencyError(f"{ESPEAK} not found on PATH; the synthetic corpus needs it: {INSTALL_HINT}")
    probe = subprocess.run(
        [binary, "-v", "he", "--stdout"], input="שלום".encode(), capture_output=True, timeout=60, check=False
    )
    if probe.returncode != 0 or len(probe.stdout) <= 44:  # 44 bytes: a WAV header with no samples
        stderr = probe.stderr.decode(errors="replace").strip()
        raise DependencyError(f"{binary} cannot speak Hebrew (voice `he`): {stderr or 'no audio'}; {INSTALL_HINT}")
    return binary


def _espeak(binary: str, text: str, voice: str, speed: int, pitch: int, label: str) -> np.ndarray:
    """espeak-ng's rendering of `text` as 16 kHz float32 (T,). Text goes through stdin, never argv."""
    cmd = [binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"]
    try:
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"{label}: espeak-ng timed out on {text!r}") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise DataError(f"{label}: espeak-ng -v {voice} failed (exit {proc.returncode}): {stderr}")
    # espeak-ng writes 22.05 kHz 16-bit WAV; decode_audio resamples it with caspi.data.audio.resample.
    samples, _ = decode_audio(proc.stdout, name=f"espeak-ng output for {label}", target_sr=SAMPLE_RATE)
    return samples


def speak(text: str, voice: str = "he", speed: int = 150, pitch: int = 50) -> np.ndarray:
    """One clean espeak-ng clip of `text`: 16 kHz mono float32 (T,). `speed` in words per minute, `pitch` 0-99.

    For demos and benchmarks that need a single utterance; DependencyError when espeak-ng is missing.
    """
    if not text.strip():
        raise ConfigError("speak(): text is empty")
    return _espeak(_require_espeak(), text, voice, speed, pitch, label=f"speak({text[:30]!r})")


def _peak_normalise(x: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(x)))
    return x if top == 0.0 else (x * (peak / top)).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _add_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled so that 10*log10(P_signal / P_noise) = snr_db (powers over the whole clip)."""
    scale = math.sqrt(_power(signal) / (max(_power(noise), 1e-20) * 10 ** (snr_db / 10)))
    return (signal + scale * noise).astype(np.float32)


def _pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS 1/f noise above 50 Hz (T,): white noise shaped in the frequency domain by 1/sqrt(f).

    Below 50 Hz it is cut: 1/f power there is a slow drift that makes 20 ms frame energies wander."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)  # Hz
    spectrum[1:] /= np.sqrt(freqs[1:] / freqs[1])
    spectrum[freqs < 50.0] = 0.0
    pink = np.fft.irfft(spectrum, n)
    return (pink / (np.sqrt(np.mean(pink**2)) + 1e-12)).astype(np.float32)


def _music_bed(n: int, rng: np.random.Generator) -> np.ndarray:
    """A unit-RMS synthetic backing track (T,): a chord progression of plucked triads, 0.4-0.9 s per chord."""
    out = np.zeros(n, dtype=np.float64)
    root = 110.0 * 2 ** (int(rng.integers(12)) / 12)  # Hz, A2 and up one octave
    chord_len = int(rng.uniform(0.4, 0.9) * SAMPLE_RATE)  # samples
    t = np.arange(chord_len) / SAMPLE_RATE  # seconds
    envelope = np.exp(-t * rng.uniform(2.0, 5.0))  # pluck: instant attack, exponential decay
    for start in range(0, n, chord_len):
        degree = (0, 5, 7, 9)[int(rng.integers(4))]  # I, IV, V, vi
        third = 3 if degree == 9 else 4  # minor on vi
        length = min(chord_len, n - start)
        for semitones in (degree, degree + third, degree + 7):
            f = root * 2 ** (semitones / 12)
            phase = rng.uniform(0, 2 * np.pi)
            tone = np.sin(2 * np.pi * f * t + phase) + 0.3 * np.sin(4 * np.pi * f * t + phase)
            out[start : start + length] += (tone * envelope)[:length]
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def _mu_law(x: np.ndarray, bits: int) -> np.ndarray:
    """Quantise (T,) in [-1, 1] with a `bits`-bit mu-law codec (G.711 is 8 bits) and expand it back."""
    mu = 255.0
    compressed = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    levels = 2 ** (bits - 1)
    quantised = np.round(compressed * levels) / levels
    return (np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu).astype(np.float32)


def _studio(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _peak_normalise(x, rng.uniform(0.5, 0.9))


def _broadcast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bed = _music_bed(len(x), rng) + rng.uniform(0.2, 0.6) * _pink_noise(len(x), rng)
    return _peak_normalise(_add_at_snr(x, bed, rng.uniform(8.0, 18.0)), rng.uniform(0.6, 0.9))


def _whatsapp(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Every distortion happens at 8 kHz: clipping and quantisation create harmonics, which must stay below 4 kHz.
    narrow = resample(x, SAMPLE_RATE, _NARROWBAND_SR)
    narrow = _add_at_snr(narrow, rng.standard_normal(len(narrow)).astype(np.float32), rng.uniform(15.0, 30.0))
    narrow = np.clip(_peak_normalise(narrow, rng.uniform(1.1, 1.6)), -1.0, 1.0)  # overdriven phone mic
    narrow = _mu_law(narrow, bits=int(rng.integers(6, 9)))  # 6-8 bit codec
    wide = resample(narrow, _NARROWBAND_SR, SAMPLE_RATE)
    # Peak below 1 so write_flac's clipping cannot put energy back above 4 kHz.
    return _peak_normalise(wide, rng.uniform(0.6, 0.9))


def _d1(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _peak_normalise(
        _add_at_snr(x, _pink_noise(len(x), rng), rng.uniform(30.0, 40.0)), rng.uniform(0.5, 0.9)
    )


_CHANNELS = {"studio": _studio, "broadcast": _broadcast, "whatsapp": _whatsapp, "d1": _d1}


def _replacement_audio(detail: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """What a `silence_or_noise` error puts in place of the speech (T,): a -70 dBFS noise floor or loud noise."""
    if detail == "silence":
        return (10 ** (-70 / 20) * rng.standard_normal(n)).astype(np.float32)
    if detail == "noise":
        return np.clip(rng.uniform(0.03, 0.1) * _pink_noise(n, rng), -1.0, 1.0)
    raise AssertionError(f"unknown silence_or_noise detail {detail}")


def _render(clip: _Clip, seed: int, binary: str, audio_dir: Path) -> tuple[int, int]:
    """Synthesise and write one clip; returns (samples written, samples before a planted truncation)."""
    speech = _espeak(binary, clip.spoken, clip.voice, clip.speed, clip.pitch, label=clip.cut_id)
    audio = _CHANNELS[clip.domain](
        speech, np.random.default_rng([seed, SPLITS[clip.split], clip.index, _AUDIO_STREAM])
    )
    full = len(audio)
    if clip.audio_error == "truncated":
        audio = audio[: full // 2]
    elif clip.audio_error is not None:
        rng = np.random.default_rng([seed, SPLITS[clip.split], clip.index, _ERROR_STREAM, 1])
        audio = _replacement_audio(clip.audio_error, full, rng)
    write_flac(audio_dir / f"{clip.cut_id}.flac", audio)
    return len(audio), full


# ---------------------------------------------------------------------------------------------------------------
# The corpus



def _validate(out_dir, n_train, n_eval, seed, error_rate, workers, min_words, max_words, domains) -> None:
    problems: list[str] = []
    unknown = [d for d in domains if d not in DOMAINS] if isinstance(domains, (list, tuple)) else None
    if unknown is None or unknown or not domains or len(set(domains)) != len(domains):
        problems.append(f"domains must be distinct names from {', '.join(DOMAINS)}, got {domains!r}")
    for name, n in (("n_train", n_train), ("n_eval", n_eval)):
        if not is_int(n) or not 0 <= n < MAX_CLIPS:
            problems.append(f"{name} must be an integer in [0, {MAX_CLIPS - 1}], got {n!r}")
    if is_int(n_train) and is_int(n_eval) and n_train == 0 and n_eval == 0:
        problems.append("n_train and n_eval are both 0: nothing to synthesise")
    if not is_int(seed) or seed < 0:
        problems.append(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(error_rate, numbers.Real) or isinstance(error_rate, bool) or not 0.0 <= error_rate <= 1.0:
        problems.append(f"error_rate must be a number in [0, 1], got {error_rate!r}")
    if not is_int(workers) or workers < 1:
        problems.append(f"workers must be an integer >= 1, got {workers!r}")
    _check_word_range(min_words, max_words, problems)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        problems.append(f"out_dir {out_dir} exists and is not a directory")
    if problems:
        raise ConfigError("invalid arguments to synthesize()", problems)


def synthesize(
    out_dir: str | Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    error_rate: float = 0.0,
    workers: int = 2,
    progress: bool = True,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    domains: tuple[str, ...] = DOMAINS,
) -> SynthSummary:
    """Write the synthetic Hebrew corpus (module docstring) to `out_dir` and return what was written.

    `n_train`/`n_eval` clips per split, `domains` (a subset of DOMAINS, e.g. Round 1's studio only) in equal shares:
    sample i has domain domains[i % len(domains)]; `error_rate` of the training clips (exactly
    round(error_rate * n_train)) get a planted error listed in planted_errors.jsonl. `workers` threads each run
    one espeak-ng process at a time. Files of the same name are overwritten; other files in `out_dir` are left.
    Raises ConfigError for invalid arguments and DependencyError when espeak-ng (or its Hebrew voice) is missing.
    """
    _validate(out_dir, n_train, n_eval, seed, error_rate, workers, min_words, max_words, domains)
    domains = tuple(domains)
    binary = _require_espeak()
    out_dir = Path(out_dir).resolve()  # absolute audio paths: Lhotse resolves relative ones against the cwd
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)

    train = [_plan_clip(seed, "train", i, min_words, max_words, domains) for i in range(n_train)]
    evals = [_plan_clip(seed, "eval", i, min_words, max_words, domains) for i in range(n_eval)]
    records: dict[int, dict] = {}
    clean_train = list(train)
    for index, kind in planted_kinds(seed, n_train, error_rate).items():
        train[index], records[index] = _plant(clean_train[index], kind, seed, clean_train)

    clips = train + evals
    render = partial(_render, seed=seed, binary=binary, audio_dir=audio_dir)
    lengths: list[tuple[int, int]] = []
    pool = ThreadPoolExecutor(max_workers=workers)  # threads suffice: the work is in espeak-ng subprocesses
    try:
        with show_progress(len(clips), "synth", enabled=progress) as bar:
            for result in pool.map(render, clips):  # results come back in clip order
                lengths.append(result)
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    cuts = [
        make_cut(c.cut_id, audio_dir / f"{c.cut_id}.flac", n, c.text, domain=c.domain)
        for c, (n, _) in zip(clips, lengths)
    ]
    for index, record in records.items():
        if record["kind"] == "truncated_audio":
            written, full = lengths[index]
            record.update(original_seconds=full / SAMPLE_RATE, seconds=written / SAMPLE_RATE)

    train_manifest = write_manifest(CutSet.from_cuts(cuts[:n_train]), out_dir / "train.jsonl.gz")
    eval_manifest = write_manifest(CutSet.from_cuts(cuts[n_train:]), out_dir / "eval.jsonl.gz")
    planted_path = write_jsonl((records[i] for i in sorted(records)), out_dir / "planted_errors.jsonl")

    return SynthSummary(
        out_dir=out_dir,
        audio_dir=audio_dir,
        train_manifest=train_manifest,
        eval_manifest=eval_manifest,
        planted_errors=planted_path,
        n_train=n_train,
        n_eval=n_eval,
        n_planted=len(records),
        train_seconds=sum(n for n, _ in lengths[:n_train]) / SAMPLE_RATE,
        eval_seconds=sum(n for n, _ in lengths[n_train:]) / SAMPLE_RATE,
    )
