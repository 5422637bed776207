"""Scorer measurements and flags on constructed samples (no audio), and the aligner's refusal for Hebrew."""

from __future__ import annotations

import numpy as np
import pytest

from caspi.audit.scorers import (
    AuditSample,
    Qwen3AlignerScorer,
    RateScorer,
    TextScorer,
    build_scorers,
    robust_z,
    scoring_letters,
)
from caspi.config import AuditConfig, Qwen3AlignerConfig, RateScorerConfig, ScorersConfig, TextScorerConfig
from caspi.errors import ConfigError


def sample(i, text="שלום עולם יפה", duration=1.0, domain="studio"):
    return AuditSample(f"s{i}", domain, text, duration)


def test_scoring_letters_ignore_spaces_punctuation_and_niqqud():
    assert scoring_letters("שָׁלוֹם, עוֹלָם!") == "שלוםעולם"


def test_robust_z_uses_each_domains_median_and_falls_back_for_small_domains():
    values = np.array([10, 11, 9, 10, 10, 30, 20, 21, 19, 20, 40.0])
    groups = ["a"] * 6 + ["b"] * 4 + ["c"]
    z = robust_z(values, groups, min_group=4)
    assert z[5] > 10 and abs(z[0]) < 1  # 30 is far from a's median of 10
    assert abs(z[6]) < 1  # b has its own median (20), so 20 is typical there
    overall = np.median(values), np.median(np.abs(values - np.median(values))) * 1.482602218505602  # 1/Φ⁻¹(¾)
    assert z[10] == pytest.approx((40 - overall[0]) / overall[1])  # c has one sample: compared with everything
    assert np.isnan(robust_z([np.nan, 1.0, 1.0], ["a", "a", "a"], 1)[0])


def test_text_scorer_flags_empty_and_latin_transcripts():
    scorer = TextScorer(TextScorerConfig())
    samples = [sample(0), sample(1, "?!"), sample(2, "hello how are you"), sample(3, "שלום Google")]
    reasons = scorer.flag(samples, scorer.measure(samples))
    assert reasons == [[], ["empty_transcript"], ["latin_script"], ["latin_script"]]  # 6 of 10 letters Latin


def test_rate_scorer_flags_both_tails_per_domain():
    scorer = RateScorer(RateScorerConfig(min_domain_samples=5))
    rng = np.random.default_rng(0)
    text = "אבגדהוזחטיכלמנסעפצקרשת"  # 22 letters
    samples = [sample(i, text, duration=float(d)) for i, d in enumerate(rng.uniform(1.9, 2.1, 30))]
    samples += [sample(30, text, duration=4.4), sample(31, text, duration=0.9)]  # half rate, double rate
    samples += [sample(40 + i, text[:11], duration=2.0, domain="slow") for i in range(10)]  # its own median
    reasons = scorer.flag(samples, scorer.measure(samples))
    assert reasons[30] == ["rate_low"] and reasons[31] == ["rate_high"]
    assert not any(reasons[:30]) and not any(reasons[32:])


def test_build_scorers_reads_the_recipe_and_refuses_none():
    assert [s.name for s in build_scorers(AuditConfig().scorers)] == ["text", "rate", "vad"]
    off = ScorersConfig(text={"enabled": False}, rate={"enabled": False}, vad={"enabled": False})
    with pytest.raises(ConfigError, match="every scorer is disabled"):
        build_scorers(off)
    with pytest.raises(ConfigError, match="give the model"):
        build_scorers(ScorersConfig(asr={"enabled": True}))


def test_qwen3_aligner_refuses_hebrew_and_says_what_to_use():
    with pytest.raises(ConfigError) as info:
        Qwen3AlignerScorer(Qwen3AlignerConfig(enabled=True, language="Hebrew"))
    message = str(info.value)
    assert "'Hebrew' is not one of them" in message and "English" in message and "ctc" in message


def test_ctc_scorer_measures_with_an_aligner_and_flags_low_coverage():
    from caspi.audit.ctc_align import CtcAligner, tiny_ctc_model
    from caspi.audit.scorers import CtcScorer
    from caspi.config import CtcScorerConfig

    model, processor = tiny_ctc_model()
    scorer = CtcScorer(CtcScorerConfig(enabled=True, min_coverage=0.5), aligner=CtcAligner(model, processor))
    rng = np.random.default_rng(0)
    samples = [sample(i, text) for i, text in enumerate(["שלום עולם", "hello"])]
    for s in samples:
        s.audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    measures = scorer.measure(samples)
    assert {"coverage", "feasible", "chars", "oov_chars"} <= set(measures[0])
    assert measures[1]["chars"] == 0 and measures[1]["coverage"] == 0.0  # no Hebrew letter to align
    fake = [{"coverage": 0.9, "feasible": True}, {"coverage": 0.2, "feasible": True},
            {"coverage": 0.9, "feasible": False}]
    assert scorer.flag(samples + [sample(3)], fake) == [[], ["low_alignment"], ["low_alignment"]]
    assert "model=" in scorer.cache_key and "confidence=0.5" in scorer.cache_key


def test_asr_scorer_compares_a_models_hypothesis_with_the_transcript():
    from caspi.audit.scorers import AsrScorer
    from caspi.config import AsrScorerConfig
    from caspi.models.families import get_family

    family = get_family("qwen3_asr")
    model, processor = family.tiny(["שלום עולם יפה"], seed=0, size="xs")
    scorer = AsrScorer(AsrScorerConfig(enabled=True, max_cer=0.75, max_new_tokens=6), model=(model, processor, family))
    s = sample(0)
    s.audio = np.zeros(16000, dtype=np.float32)
    (m,) = scorer.measure([s])
    assert isinstance(m["hypothesis"], str) and m["cer"] >= 0
    assert scorer.flag([s, s, s], [{"cer": 0.1}, {"cer": 0.9}, {"cer": float("nan")}]) == [
        [], ["asr_mismatch"], ["asr_mismatch"]]


def _false_alarm_rate(n: int, threshold, reps: int, seed: int = 0) -> float:
    from scipy.stats import median_abs_deviation

    x = np.random.default_rng(seed).standard_normal((reps, n))
    z = (x - np.median(x, axis=1, keepdims=True)) / median_abs_deviation(x, axis=1, scale="normal")[:, None]
    return float((np.abs(z) > threshold).mean())


def test_robust_threshold_holds_the_clean_false_alarm_rate_at_50_clips_as_at_5000():
    from caspi.audit.scorers import normal_false_alarm_rate, robust_threshold

    nominal = normal_false_alarm_rate(3.0)  # 0.27 %
    assert _false_alarm_rate(50, 3.0, 8000) > 2 * nominal  # a fixed |z| > 3 at 50 clips: ~0.66 %
    small = _false_alarm_rate(50, robust_threshold(3.0, 50), 8000)
    large = _false_alarm_rate(5000, robust_threshold(3.0, 5000), 80)
    assert 0.75 * nominal < small < 1.25 * nominal and 0.75 * nominal < large < 1.25 * nominal
    assert float(robust_threshold(3.0, 50_000)) == pytest.approx(3.0, abs=0.01)


def test_rate_scorer_threshold_widens_in_a_small_domain():
    from scipy.stats import norm

    scorer = RateScorer(RateScorerConfig(max_abs_z=3.0, min_domain_samples=20))
    text = "אבגדהוזחטיכלמנסעפצקרשת"  # 22 letters

    def domain(name, n):  # rates at evenly spaced normal quantiles (median 11, MAD-scale ≈ 1) plus one at z = 3.25
        rates = 11 + norm.ppf((np.arange(n) + 0.5) / n)
        rates = np.append(rates, 11 + 3.25)
        return [sample(f"{name}{i}", text, duration=22 / r, domain=name) for i, r in enumerate(rates)]

    small, large = domain("small", 49), domain("large", 4999)
    reasons = scorer.flag(small + large, scorer.measure(small + large))
    assert reasons[len(small) - 1] == [] and reasons[-1] == ["rate_high"]


def test_hard_and_soft_reasons():
    from caspi.audit.scorers import is_hard

    assert all(is_hard(r) for r in ("unreadable", "no_speech", "empty_transcript", "latin_script"))
    assert not any(is_hard(r) for r in ("rate_low", "rate_high", "text_exceeds_speech", "low_alignment",
                                        "asr_mismatch", "aligner_low_coverage"))
    assert RateScorer(RateScorerConfig(max_abs_z=3.0)).false_alarm_rate == pytest.approx(0.0027, abs=1e-4)
    assert TextScorer(TextScorerConfig()).false_alarm_rate == 0.0
