"""Scorer measurements and flags on constructed samples (no audio), and the aligner's refusal for Hebrew."""

from __future__ import annotations

import re

import numpy as np
import pytest

from caspi.audit.scorers import (
    AuditSample,
    Qwen3AlignerScorer,
    RateScorer,
    TextScorer,
    build_scorers,
    robust_scores,
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

    # One transcript for every clip: no duration model can be fitted, so this is characters per second's z.

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


# ------------------------------------------------------------------------- the loss scorer (issue #16, section 2.4)


def loss_measures(losses, swaps=None):
    swaps = swaps if swaps is not None else [5.0] * len(losses)  # far above: the scorer sees the domain
    return [{"loss": x, "tokens": 10, "swap_loss": y} for x, y in zip(losses, swaps)]


def loss_scorer(**settings):
    from caspi.audit.scorers import LossScorer
    from caspi.config.schema import LossScorerConfig

    return LossScorer(LossScorerConfig(**settings), model=(None, None, None))  # flag/explain need no model


def test_a_swapped_transcript_costs_the_model_more_than_the_true_one(tone_model, tone_sentences):
    from caspi.audit.scorers import transcript_losses
    from caspi.testing import tone

    model, processor, family = tone_model
    audio = [tone(1.0, f) for f, _ in tone_sentences]
    texts = [t for _, t in tone_sentences]
    own = transcript_losses(model, processor, family, audio, texts, batch_size=3)
    swapped = transcript_losses(model, processor, family, audio, texts[1:] + texts[:1], batch_size=3)
    # The character tokenizer: one token per letter or space, plus the end token (`language Hebrew<asr_text>` excluded).
    assert [n for _, n in own] == [len(t) + 1 for t in texts]
    for (mine, _), (other, _) in zip(own, swapped):
        assert mine < 0.05 and other > 10 * mine  # measured: ≤ 0.0011 against 0.59–1.9 nats/token


def test_transcript_losses_are_the_training_loss_of_the_transcript_alone():
    import torch

    from caspi.audit.scorers import label_prefix_length, transcript_losses
    from caspi.models import get_family
    from caspi.testing import tone

    texts = ["שלום עולם יפה", "בוקר"]
    audio = [tone(1.3, 440), tone(0.6123, 880)]  # the shorter one is not a whole number of 160-sample hops
    for name in ("qwen3_asr", "whisper"):
        family = get_family(name)
        # Qwen3-ASR with the speech-like front end: a default-init model's loss hardly depends on its audio.
        model, processor = family.tiny(texts, seed=0, **({"audio_init": "he"} if name == "qwen3_asr" else {}))
        batched = transcript_losses(model, processor, family, audio, texts)  # padded together
        alone = [transcript_losses(model, processor, family, [a], [t])[0] for a, t in zip(audio, texts)]
        assert [n for _, n in batched] == [n for _, n in alone]
        assert [x for x, _ in batched] == pytest.approx([x for x, _ in alone], rel=1e-6)
        prefix = label_prefix_length(family, processor, None)
        # `language Hebrew<asr_text>` in characters; Whisper's <|he|><|transcribe|><|notimestamps|>
        assert prefix == {"qwen3_asr": 16, "whisper": 3}[name]
        if name == "qwen3_asr":  # the model's own loss with the prefix masked out of the labels: the same number
            batch = family.build_inputs(processor, audio[:1], texts[:1])
            labels = batch["labels"].clone()
            first = int((labels[0] != -100).nonzero()[0])
            labels[0, first:first + prefix] = -100
            with torch.no_grad():
                assert float(model(**batch | {"labels": labels}).loss) == pytest.approx(alone[0][0], rel=1e-5)


def test_loss_outliers_are_judged_within_their_own_domain():
    scorer = loss_scorer(min_domain_samples=5, max_z=3.0)
    rng = np.random.default_rng(0)
    studio = list(0.5 + 0.05 * rng.standard_normal(20)) + [1.5]  # 1.5 is far out for studio ...
    whatsapp = list(2.0 + 0.3 * rng.standard_normal(20)) + [1.5, 4.0]  # ... and typical of whatsapp; 4.0 is not
    samples = [sample(i, domain="studio") for i in range(21)] + [sample(100 + i, domain="whatsapp") for i in range(22)]
    measures = loss_measures(studio + whatsapp)
    reasons = scorer.flag(samples, measures)
    assert [i for i, r in enumerate(reasons) if r] == [20, 42] and reasons[20] == ["loss_outlier"]
    notes = scorer.explain(samples, measures)
    assert re.fullmatch(r"loss 1\.50 nats/token, domain median 0\.(49|50|51) \(z \+\d+\.\d, limit \d\.\d\d\)",
                        notes[20]["loss_outlier"])
    assert re.match(r"loss 4\.00 nats/token, domain median (1\.9|2\.0)", notes[42]["loss_outlier"])
    assert notes[0] == {}
    zs = scorer.flag_scores(samples, measures)  # the upper-tail z in the words, for the report's ranking
    assert [i for i, z in enumerate(zs) if z] == [20, 42] and f"z {zs[20]['loss_outlier']:+.1f}," in notes[20][
        "loss_outlier"]
    # One-sided: an unusually low loss (a transcript the model finds easy) is no evidence of a wrong one.
    assert scorer.flag(samples[:21], loss_measures(studio[:20] + [0.0])) == [[]] * 21
    assert scorer.false_alarm_rate == pytest.approx(0.00135, abs=1e-5)


def test_the_upper_semi_mad_keeps_a_right_skewed_clean_spread_from_raising_false_alarms():
    from caspi.audit.scorers import robust_scores

    rng = np.random.default_rng(0)
    # Losses of clean clips under a model that knows the sound: most near 0, a tail of partly misheard clips.
    skewed, normal = rng.gamma(2.0, 0.2, 3000), rng.normal(1.0, 0.2, 3000)

    def flagged(x, tail):
        sc = robust_scores(x, ["d"] * len(x), 20, 2.5, tail=tail)
        return float(np.mean(sc.z > sc.limit))

    assert flagged(skewed, "both") > 0.05 and flagged(skewed, "upper") < 0.6 * flagged(skewed, "both")
    assert flagged(normal, "upper") == pytest.approx(flagged(normal, "both"), abs=0.002)  # both σ for normal data
    assert robust_scores(normal, ["d"] * 3000, 20, tail="upper").ref_n[0] == 1500  # the half above the median


def test_the_scorer_says_which_domains_it_can_see_and_flags_nothing_where_it_cannot():
    scorer = loss_scorer(min_domain_samples=5, min_visibility=0.5)
    rng = np.random.default_rng(1)
    heard = list(0.5 + 0.05 * rng.standard_normal(30))
    unheard = list(2.0 + 0.3 * rng.standard_normal(30)) + [9.0]
    # Where the model hears the audio, another sample's transcript costs far more than the claimed one; where it
    # does not, both are scored by the text prior alone and come from the same distribution.
    swaps = list(3.0 + 0.3 * rng.standard_normal(30)) + list(2.0 + 0.3 * rng.standard_normal(31))
    samples = [sample(i, domain="heard") for i in range(30)] + [sample(100 + i, domain="unheard") for i in range(31)]
    measures = loss_measures(heard + unheard, swaps)
    report = scorer.domain_report(samples, measures)
    assert report["heard"]["sees"] and report["heard"]["swap_recall"] == 1.0 and report["heard"]["swap_auc"] == 1.0
    assert not report["unheard"]["sees"] and report["unheard"]["swap_recall"] < 0.1
    assert 0.3 < report["unheard"]["swap_auc"] < 0.7 and report["unheard"]["probes"] == 31
    assert report["heard"]["median_loss"] == pytest.approx(np.median(heard))
    assert report["unheard"]["summary"].startswith("cannot see: 0% of 31 swapped transcripts would be flagged (AUC 0.")
    assert not any(scorer.flag(samples, measures))  # the 9.0 in `unheard` is far out, but the scorer is blind there
    # Without probes (a batch of one sample each) nothing is vouched for.
    blind = scorer.domain_report(samples, loss_measures(heard + unheard, [float("nan")] * 61))
    assert not blind["heard"]["sees"] and blind["heard"]["probes"] == 0
    assert blind["heard"]["summary"].startswith("cannot see: no swapped transcript was scored here")


def test_the_loss_scorer_catches_a_wrong_transcript_on_audio_the_model_knows(tone_model, tone_clips):
    from caspi.audit.scorers import AuditSample

    scorer = loss_scorer(min_domain_samples=4)
    scorer._loaded = tone_model
    samples = [AuditSample(i, d, t, len(a) / 16000, audio=a) for i, d, a, t in tone_clips]
    measures = scorer.measure(samples)
    assert all(m["tokens"] > 0 and np.isfinite(m["loss"]) and np.isfinite(m["swap_loss"]) for m in measures)
    reasons = scorer.flag(samples, measures)
    assert {s.id for s, r in zip(samples, reasons) if r} == {"tones-3"}  # the tone carrying another one's sentence
    report = scorer.domain_report(samples, measures)
    assert report["tones"]["sees"] and report["tones"]["swap_recall"] == 1.0
    assert not report["noise"]["sees"] and report["noise"]["swap_recall"] == 0.0  # it never heard noise
    assert 0.3 < report["noise"]["swap_auc"] < 0.7


def test_swap_partners_stay_in_the_domain_and_skip_identical_transcripts():
    from caspi.audit.scorers import swap_partners

    samples = [sample(0, "א"), sample(1, "א"), sample(2, "ב"), sample(3, "ג", domain="d"), sample(4, "ג", domain="x")]
    # 3 and 4 are alone in their domains and share a text: each takes the next sample with another text.
    assert swap_partners(samples) == [2, 2, 0, 0, 0]
    assert swap_partners([sample(0)]) == [None]


def test_loss_scorer_config_errors_name_the_key():
    from caspi.audit.scorers import LossScorer
    from caspi.config import apply_overrides, validate_recipe_dict
    from caspi.config.schema import LossScorerConfig

    with pytest.raises(ConfigError) as info:
        validate_recipe_dict(apply_overrides({"name": "r"}, ["audit.scorers.loss.enabled=true",
                                                             "audit.scorers.loss.max_z=0",
                                                             "audit.scorers.loss.min_visibility=1.5"]))
    message = str(info.value)
    assert "audit.scorers.loss: model: give the model that reads the transcripts" in message
    assert "audit.scorers.loss.max_z: Input should be greater than 0" in message
    assert "audit.scorers.loss.min_visibility: Input should be less than or equal to 1" in message
    with pytest.raises(ConfigError, match=r"audit\.scorers\.loss\.model: give the model"):
        LossScorer(LossScorerConfig())
    recipe = validate_recipe_dict(apply_overrides({"name": "r"}, ["audit.scorers.loss.enabled=true",
                                                                  "audit.scorers.loss.model=runs/round1"]))
    built = build_scorers(recipe.audit.scorers)
    assert [s.name for s in built] == ["text", "rate", "vad", "loss"] and built[-1].cache_key == "1:model=runs/round1"


def test_rate_reasons_say_the_rate_and_the_domain_median():
    scorer = RateScorer(RateScorerConfig(min_domain_samples=5))  # one transcript: no fit, characters per second
    text = "אבגדהוזחטיכלמנסעפצקרשת"  # 22 letters
    samples = [sample(i, text, duration=2.0 + 0.01 * i) for i in range(30)] + [sample(30, text, duration=4.4)]
    notes = scorer.explain(samples, scorer.measure(samples))
    assert notes[30]["rate_low"].startswith("5.0 chars/s, domain median 10.") and notes[0] == {}


# ------------------------------------------------------------------ the rate scorer's duration model (issue #16)

ALEF_BET = "אבגדהוזחטיכלמנסעפצקרשת"


def transcript(letters: int, pauses: int = 0) -> str:
    """Hebrew words of up to 4 letters, `letters` in all, a comma after each of the first `pauses` words, and a
    final stop (which is no pause)."""
    chars = (ALEF_BET * 10)[:letters]
    words = [chars[i:i + 4] for i in range(0, letters, 4)]
    return " ".join(w + ("," if j < pauses else "") for j, w in enumerate(words)) + "."


def spoken(name: str, n: int, seed: int, *, a=0.3, b=0.07, c=0.4, noise=0.03) -> list[AuditSample]:
    """n clean clips of one domain: duration = (a + b·letters + c·pauses) × e^(noise·N(0, 1)), 10–44 letters,
    70 % of the transcripts without a pause."""
    rng = np.random.default_rng(seed)
    letters, pauses = rng.integers(10, 45, n), rng.choice(3, n, p=[0.7, 0.2, 0.1])
    wobble = np.exp(noise * rng.standard_normal(n))
    return [sample(f"{name}{i}", transcript(int(k), int(p)), duration=float((a + b * k + c * p) * w), domain=name)
            for i, (k, p, w) in enumerate(zip(letters, pauses, wobble))]


def test_pause_count_counts_internal_clause_marks_once_per_run():
    from caspi.audit.scorers import pause_count

    assert pause_count("ערב טוב, אורית, מה שלומך?") == 2  # the final "?" ends the clip: no pause inside it
    assert pause_count("שלום עולם.") == 0
    assert pause_count("באמת?! כן... אולי; נראה: טוב") == 4  # "?!" and "..." are one pause each
    assert pause_count("עלה 3.5 שקלים ל-1,000 איש") == 0  # a decimal point and a thousands separator
    assert pause_count("כן , לא") == 1 and pause_count("") == 0
    scorer = RateScorer(RateScorerConfig())
    assert scorer.measure([sample(0, "ערב טוב, אורית, מה שלומך?", duration=2.0)]) == [
        {"chars_per_s": 9.0, "letters": 18, "pauses": 2}]
    assert scorer.version != "1"  # chars/s-only measurements of version 1 are measured again


def test_robust_fit_recovers_known_coefficients_despite_ten_percent_outliers():
    from caspi.audit.scorers import robust_linear_fit

    rng = np.random.default_rng(0)
    n = 300
    letters, pauses = rng.integers(8, 60, n).astype(float), rng.integers(0, 4, n).astype(float)
    seconds = (0.4 + 0.07 * letters + 0.2 * pauses) * np.exp(0.03 * rng.standard_normal(n))
    outliers = rng.choice(n, n // 10, replace=False)  # 30 clips: half twice as long, half half as long
    seconds[outliers[:15]] *= 2.0
    seconds[outliers[15:]] *= 0.5
    X = np.column_stack([np.ones(n), letters, pauses])
    a, b, c = robust_linear_fit(X, seconds)
    assert a == pytest.approx(0.4, abs=0.03) and b == pytest.approx(0.07, rel=0.02)
    assert c == pytest.approx(0.2, abs=0.02)
    ols = np.linalg.lstsq(X, seconds, rcond=None)[0]
    assert abs(ols[0] - 0.4) > 0.15  # least squares is pulled away by the same outliers
    assert np.array_equal(robust_linear_fit(X, seconds), [a, b, c])  # deterministic
    # A column of zeros (no clip with a pause) gets the minimum-norm coefficient 0, the rest is still recovered.
    clean = (0.4 + 0.07 * letters) * np.exp(0.03 * rng.standard_normal(n))
    fitted = robust_linear_fit(np.column_stack([np.ones(n), letters, np.zeros(n)]), clean)
    assert fitted[2] == 0 and fitted[1] == pytest.approx(0.07, rel=0.02)


def test_a_clean_clip_with_two_commas_is_not_flagged_but_a_half_cut_transcript_is():
    scorer = RateScorer(RateScorerConfig())
    two_commas = sample("commas", transcript(12, 2), duration=0.3 + 0.07 * 12 + 0.4 * 2)  # as spoken, long pauses
    half_cut = sample("cut", transcript(15), duration=0.3 + 0.07 * 30)  # 30 letters spoken, 15 in the transcript
    samples = spoken("studio", 80, seed=1) + [two_commas, half_cut]
    measures = scorer.measure(samples)
    reasons = scorer.flag(samples, measures)
    assert reasons[-2:] == [[], ["rate_low"]] and not any(reasons[:-2])
    # Characters per second against the domain median (version 1) flagged the two-comma clip as well.
    rates = robust_scores([m["chars_per_s"] for m in measures], [s.domain for s in samples], 20, 3.0)
    assert rates.z[-2] < -rates.limit[-2]
    fitted = scorer.fit(samples, measures)
    assert fitted.own_fit.all() and fitted.expected[-2] == pytest.approx(two_commas.duration, rel=0.03)
    # Too much text for the audio is the other tail: the same clip with appended words.
    appended = sample("appended", transcript(30), duration=0.3 + 0.07 * 15)
    assert scorer.flag(samples + [appended], scorer.measure(samples + [appended]))[-1] == ["rate_high"]


def test_a_small_domain_uses_the_fit_of_all_samples():
    from caspi.audit.scorers import robust_linear_fit

    scorer = RateScorer(RateScorerConfig(min_domain_samples=20))
    small = spoken("small", 6, seed=2, a=0.3, b=0.07, c=0.4)
    small.append(sample("small-cut", transcript(20), duration=0.3 + 0.07 * 40, domain="small"))
    samples = spoken("big", 60, seed=3) + small
    measures = scorer.measure(samples)
    fitted = scorer.fit(samples, measures)
    assert fitted.own_fit[:60].all() and not fitted.own_fit[60:].any()
    X = np.array([[1.0, m["letters"], m["pauses"]] for m in measures])
    pooled = robust_linear_fit(X, np.array([s.duration for s in samples]))
    assert np.allclose(fitted.expected[60:], X[60:] @ pooled)
    reasons = scorer.flag(samples, measures)
    assert reasons[-1] == ["rate_low"] and not any(reasons[:-1])
    assert "(fit of all samples)" in scorer.explain(samples, measures)[-1]["rate_low"]
    # A domain of 25 clips of one letter count cannot fit seconds per letter: the fit of all samples, but its
    # residuals still against its own median.
    same = [sample(f"same{i}", transcript(20), duration=1.7 + 0.002 * i, domain="same") for i in range(25)]
    fitted = scorer.fit(samples + same, scorer.measure(samples + same))
    assert not fitted.own_fit[-25:].any() and fitted.scores.own[-25:].all()


def test_too_few_samples_for_a_fit_fall_back_to_characters_per_second():
    scorer = RateScorer(RateScorerConfig(min_domain_samples=20))
    samples = spoken("studio", 18, seed=4) + [sample("cut", transcript(10), duration=0.3 + 0.07 * 40)]
    measures = scorer.measure(samples)
    assert scorer.fit(samples, measures) is None  # 19 clips < 20
    rates = robust_scores([m["chars_per_s"] for m in measures], [s.domain for s in samples], 20, 3.0)
    expected = [["rate_low"] if z < -t else ["rate_high"] if z > t else [] for z, t in zip(rates.z, rates.limit)]
    assert scorer.flag(samples, measures) == expected and expected[-1] == ["rate_low"]
    assert scorer.explain(samples, measures)[-1]["rate_low"].startswith("3.2 chars/s, median of all samples ")
    # 40 clips, but no domain with 20: no fit either (a pooled fit of small domains of different speeds does not
    # pin the seconds per letter down).
    mixed = [c for k, name in enumerate(("a", "b", "c", "d")) for c in spoken(name, 10, seed=5 + k, b=0.06 + 0.01 * k)]
    assert scorer.fit(mixed, scorer.measure(mixed)) is None


def test_half_cut_transcripts_cannot_pull_the_fit():
    """Half-cut transcripts have few letters for their seconds: outlying in X, they pull a fit started from least
    squares or Huber's (to 0.02 s per letter here); the trimmed start keeps them out."""
    from caspi.audit.scorers import robust_linear_fit

    rng = np.random.default_rng(0)
    letters = rng.integers(14, 25, 18).astype(float)
    seconds = (0.5 + 0.085 * letters) * np.exp(0.04 * rng.standard_normal(18))
    said = rng.integers(16, 23, 6).astype(float)  # 6 of 24 transcripts lost half their letters
    letters, seconds = np.r_[letters, np.floor(said / 2)], np.r_[seconds, (0.5 + 0.085 * said)]
    X = np.column_stack([np.ones(24), letters, np.zeros(24)])
    assert robust_linear_fit(X, seconds)[1] == pytest.approx(0.085, rel=0.15)
    samples = [sample(i, transcript(int(k)), duration=float(d)) for i, (k, d) in enumerate(zip(letters, seconds))]
    reasons = RateScorer(RateScorerConfig()).flag(samples, RateScorer(RateScorerConfig()).measure(samples))
    assert reasons == [[]] * 18 + [["rate_low"]] * 6


def test_rate_reasons_say_the_seconds_expected_from_letters_and_pauses():
    scorer = RateScorer(RateScorerConfig())
    samples = spoken("studio", 80, seed=1) + [sample("cut", transcript(22, 2), duration=4.4)]
    notes = scorer.explain(samples, scorer.measure(samples))
    # 0.3 + 0.07 × 22 + 0.4 × 2 = 2.64 s expected
    assert re.fullmatch(r"4\.4 s of audio, 2\.6 s expected from 22 letters and 2 pauses \(studio fit\), "
                        r"z -\d+\.\d, limit ±3\.\d\d", notes[-1]["rate_low"])
    assert not any(notes[:-1])
    # The report ranks by the fit's z, the one in the words, not by a z of characters per second.
    zs = scorer.flag_scores(samples, scorer.measure(samples))
    assert not any(zs[:-1]) and list(zs[-1]) == ["rate_low"] and zs[-1]["rate_low"] < -3
    assert f"z {zs[-1]['rate_low']:+.1f}," in notes[-1]["rate_low"]
