"""Bootstrap intervals against a slow reference loop, the paired test's p-values, and Benjamini–Hochberg against a
textbook example."""

import math
import statistics

import numpy as np
import pytest

from caspi.errors import DataError
from caspi.eval.bootstrap import (
    PairedResult,
    benjamini_hochberg,
    bootstrap_ci,
    macro_bootstrap,
    paired_bootstrap,
)
from caspi.eval.evaluate import summarise
from caspi.scoring import UtteranceCounts, rate

# --- bootstrap_ci -------------------------------------------------------------------------------------------------


def _case(n: int = 300, wer: float = 0.2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    refs = rng.integers(4, 25, n)  # words per utterance
    errors = rng.binomial(refs, wer)
    return errors, refs


def _reference_rates(errors, refs, resamples: int, seed: int) -> np.ndarray:
    """The textbook bootstrap, one resample at a time: draw n utterance indices with replacement, recompute Σe/Σr."""
    rng = np.random.default_rng(seed)
    n = len(errors)
    out = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        out[b] = errors[idx].sum() / refs[idx].sum()
    return out


REFERENCE_RESAMPLES = 20_000


@pytest.fixture(scope="module")
def reference_rates() -> np.ndarray:
    errors, refs = _case()
    return _reference_rates(errors, refs, REFERENCE_RESAMPLES, seed=123)  # ~0.5 s, shared by the three levels


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_bootstrap_ci_matches_reference_loop_in_distribution(level, reference_rates):
    errors, refs = _case()
    resamples = REFERENCE_RESAMPLES
    slow = reference_rates
    alpha = (1 - level) / 2
    slow_lo, slow_hi = np.quantile(slow, [alpha, 1 - alpha])
    lo, hi = bootstrap_ci(errors, refs, resamples=resamples, seed=7, level=level)

    # Two independent Monte-Carlo estimates of the same quantile. An empirical p-quantile of R draws has standard
    # error sqrt(p(1-p)/R) / f(q_p); with the bootstrap distribution ~ Normal(., σ), f(q_p) = φ(z_p) / σ. For this
    # case (WER 0.194 on 4,286 words, σ ≈ 0.0065) at p = 0.025 that is 1.2e-4 per estimate, 1.7e-4 for the
    # difference, so tol = 5 × 1.7e-4 = 8.6e-4 (observed: 2.6e-4 and 0.4e-4). A flat 0.01 would be too loose: an
    # interval from n/2 draws per resample (√2 too wide) is off by only 0.005 here, and this tolerance catches it.
    sigma = slow.std()
    z = statistics.NormalDist().inv_cdf(alpha)
    density = math.exp(-z * z / 2) / math.sqrt(2 * math.pi) / sigma
    tol = 5 * math.sqrt(2) * math.sqrt(alpha * (1 - alpha) / resamples) / density
    assert tol < 0.01
    assert abs(lo - slow_lo) < tol
    assert abs(hi - slow_hi) < tol


def test_bootstrap_ci_degenerate_case_collapses():
    # Every utterance has rate exactly 0.2 (2k errors in 10k words), so every resample's Σe/Σr is 0.2.
    k = np.array([1, 2, 3, 5, 8, 13])
    lo, hi = bootstrap_ci(2 * k, 10 * k, resamples=500, seed=0)
    assert lo == pytest.approx(0.2, abs=1e-12)
    assert hi == pytest.approx(0.2, abs=1e-12)
    assert bootstrap_ci(np.zeros(4), np.full(4, 7), resamples=100, seed=0) == (0.0, 0.0)


def test_bootstrap_ci_is_deterministic_by_seed():
    errors, refs = _case()
    assert bootstrap_ci(errors, refs, resamples=1000, seed=3) == bootstrap_ci(errors, refs, resamples=1000, seed=3)
    assert bootstrap_ci(errors, refs, resamples=1000, seed=3) != bootstrap_ci(errors, refs, resamples=1000, seed=4)


@pytest.mark.parametrize("resamples", [1000, 450])  # 450: the last block of resamples is partial
def test_bootstrap_ci_contains_point_estimate(resamples):
    errors, refs = _case()
    lo, hi = bootstrap_ci(errors, refs, resamples=resamples, seed=0)
    point = rate(errors, refs)
    assert lo < point < hi
    assert 0.15 < lo and hi < 0.25  # WER 0.194 on 4,286 words: the interval is about ±0.0125


def test_bootstrap_ci_rejects_zero_utterances():
    with pytest.raises(DataError):
        bootstrap_ci(np.array([]), np.array([]), resamples=10)


# --- macro interval (mean of the domains' rates) ------------------------------------------------------------------


def _slow_macro_rates(domains: list[tuple[np.ndarray, np.ndarray]], resamples: int, seed: int) -> np.ndarray:
    """The textbook macro bootstrap: per resample, each domain draws its own n_d indices with replacement,
    independently of the others; the macro rate is the mean of the domains' Σe/Σr."""
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for b in range(resamples):
        rates = []
        for errors, refs in domains:
            idx = rng.integers(0, len(errors), len(errors))
            rates.append(errors[idx].sum() / refs[idx].sum())
        out[b] = np.mean(rates)
    return out


def _domains_as_counts(domains: list[tuple[np.ndarray, np.ndarray]]) -> tuple[UtteranceCounts, list[str]]:
    """Word counts of the domains stacked into one UtteranceCounts (the errors as substitutions), with labels."""
    errors = np.concatenate([e for e, _ in domains])
    refs = np.concatenate([r for _, r in domains])
    zeros = np.zeros_like(errors)
    labels = [f"d{k}" for k, (e, _) in enumerate(domains) for _ in range(len(e))]
    return UtteranceCounts(errors, zeros, zeros, refs, errors, zeros, zeros, refs), labels


@pytest.mark.parametrize("identical", [True, False])
def test_macro_interval_resamples_domains_independently(identical):
    # Four domains of 150 utterances. Identical domains are the sharpest case: drawn with the same random numbers
    # (one seed for every domain, the old code) the four resampled rates are equal in every resample, the macro
    # rate is one domain's and its interval is as wide as one domain's, twice the independent width (σ/√4).
    # Width tolerance: the 2.5 % and 97.5 % quantiles of 4,000 resamples each have a Monte-Carlo standard error of
    # ~2.5 % of the width here (sqrt(p(1-p)/R)/φ(1.96) × σ over a width of 3.92 σ), so 12 % is > 3 SE for the
    # difference of two estimates, and far from the factor 2 of shared draws. (Domains of unrelated data drawn with
    # shared weights are barely correlated: that case checks the interval itself, not the independence.)
    first = _case(n=150, wer=0.2, seed=1)
    domains = [first] * 4 if identical else [_case(n=150, wer=w, seed=s) for w, s in ((0.1, 1), (0.2, 2), (0.3, 3),
                                                                                         (0.4, 4))]
    resamples = 4000
    slow = _slow_macro_rates(domains, resamples, seed=99)
    slow_lo, slow_hi = np.quantile(slow, [0.025, 0.975])

    counts, labels = _domains_as_counts(domains)
    summary = summarise(counts, labels, resamples=resamples, seed=5)
    lo, hi = summary["overall"]["wer_macro_ci95"]
    assert summary["overall"]["wer_macro"] == pytest.approx(np.mean([rate(e, r) for e, r in domains]))
    assert (hi - lo) == pytest.approx(slow_hi - slow_lo, rel=0.12)
    assert lo == pytest.approx(slow_lo, abs=0.12 * (slow_hi - slow_lo))
    if identical:
        one_domain = summary["domains"]["d0"]["wer_ci95"]
        assert (hi - lo) < 0.6 * (one_domain[1] - one_domain[0])  # ~0.5: four independent domains average out
        # each domain has its own stream, so identical domains still get different (equally valid) intervals
        assert len({tuple(summary["domains"][f"d{k}"]["wer_ci95"]) for k in range(4)}) == 4


def test_macro_bootstrap_is_deterministic_and_matches_per_domain_intervals():
    domains = [_case(n=80, wer=w, seed=s) for w, s in ((0.1, 1), (0.3, 2))]
    counts, labels = _domains_as_counts(domains)
    masks = [np.asarray(labels) == f"d{k}" for k in range(2)]
    per_domain, ci = macro_bootstrap(counts.word_errors, counts.ref_words, masks, resamples=500, seed=3)
    assert [r.shape for r in per_domain] == [(500,), (500,)]
    assert macro_bootstrap(counts.word_errors, counts.ref_words, masks, resamples=500, seed=3)[1] == ci
    assert macro_bootstrap(counts.word_errors, counts.ref_words, masks, resamples=500, seed=4)[1] != ci
    assert np.corrcoef(per_domain[0], per_domain[1])[0, 1] == pytest.approx(0, abs=0.15)  # independent streams
    summary = summarise(counts, labels, resamples=500, seed=3)
    assert summary["overall"]["wer_macro_ci95"] == list(ci)
    for k in range(2):
        want = np.quantile(per_domain[k], [0.025, 0.975])
        assert summary["domains"][f"d{k}"]["wer_ci95"] == pytest.approx(want, rel=1e-12)


# --- paired_bootstrap ---------------------------------------------------------------------------------------------


def test_paired_identical_systems():
    errors, refs = _case(n=200)
    res = paired_bootstrap(errors, errors.copy(), refs, resamples=1000, seed=0)
    assert isinstance(res, PairedResult)
    assert res.p_value == 1.0
    assert res.difference == 0.0
    assert res.ci == (0.0, 0.0)
    assert res.rate_a == res.rate_b == rate(errors, refs)


def test_paired_large_difference_is_significant_with_the_right_sign():
    rng = np.random.default_rng(5)
    refs = np.full(200, 10)
    a = rng.binomial(refs, 0.3)  # WER ~0.30
    b = rng.binomial(refs, 0.1)  # WER ~0.10: B far better
    res = paired_bootstrap(a, b, refs, resamples=1000, seed=0)
    assert res.difference == pytest.approx(rate(b, refs) - rate(a, refs))
    assert res.difference < 0
    assert res.ci[1] < 0  # the whole interval says B is better
    assert 0 < res.p_value < 0.01
    assert res.p_value == pytest.approx(1 / 1001)  # no shifted resample reaches it: the +1 floor

    flipped = paired_bootstrap(b, a, refs, resamples=1000, seed=0)
    assert flipped.difference == pytest.approx(-res.difference)
    assert flipped.ci[0] > 0
    assert flipped.p_value == res.p_value


def test_paired_tiny_difference_is_not_significant():
    errors, refs = _case(n=200, seed=2)
    b = errors.copy()
    rng = np.random.default_rng(11)
    idx = rng.choice(200, size=9, replace=False)
    b[idx[:5]] += 1  # B: 5 errors more and 4 fewer on 9 of 200 utterances (net +1 of ~570 errors)
    b[idx[5:]] = np.maximum(b[idx[5:]] - 1, 0)
    res = paired_bootstrap(errors, b, refs, resamples=1000, seed=0)
    assert abs(res.difference) < 0.001
    assert res.ci[0] < 0 < res.ci[1]
    assert res.p_value > 0.05  # verified: 0.67 for seed 0 (0.67–0.77 over seeds 0–4)


def test_paired_p_values_are_calibrated_under_the_null():
    # A and B drawn from the same error process on each of 200 datasets: a two-sided test at 0.05 should reject
    # ~5 % of them (Binomial(200, 0.05): 10 ± 3.1) and p < 0.5 should hold for ~half (100 ± 7.1). Bounds are
    # ~3 standard deviations (this seed: 11 and 89). A missing null shift (nothing rejected) or a doubled p
    # (~10 % rejected) falls outside them; a one-sided p would not, and is caught by the sign test above.
    rng = np.random.default_rng(0)
    p = []
    for i in range(200):
        refs = rng.integers(4, 25, 200)
        a, b = rng.binomial(refs, 0.2), rng.binomial(refs, 0.2)
        p.append(paired_bootstrap(a, b, refs, resamples=500, seed=i).p_value)
    p = np.array(p)
    assert 1 <= np.sum(p < 0.05) <= 20
    assert 78 <= np.sum(p < 0.5) <= 122


def test_paired_rejects_mismatched_lengths():
    with pytest.raises(DataError):
        paired_bootstrap(np.ones(5), np.ones(4), np.ones(5))
    with pytest.raises(DataError):
        paired_bootstrap(np.ones(5), np.ones(5), np.ones(6))


# --- benjamini_hochberg -------------------------------------------------------------------------------------------

# Benjamini & Hochberg (1995), section 4: 15 p-values from a clinical trial. Adjusted p_(i) = min over j >= i of
# p_(j) * m / j, m = 15:
#   i:        1       2       3       4         5       6       7         8       9       10     11        12
#   p*15/i:   .0015   .003    .0095   .035625   .0603   .0695   .063857   .0645   .0765   .486   .581182   .714875
#   i: 13 .753231, 14 .813214, 15 1.0.
# The running minimum from the top changes only i = 6 (.0695 → .063857, from i = 7). Four are ≤ 0.05: the
# paper's four rejections at q = 0.05.
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
           0.6528, 0.7590, 1.0000]
BH_1995_ADJUSTED = [0.0015, 0.003, 0.0095, 0.035625, 0.0603, 0.0298 * 15 / 7, 0.0298 * 15 / 7, 0.0645, 0.0765,
                    0.486, 0.4262 * 15 / 11, 0.714875, 0.6528 * 15 / 13, 0.7590 * 15 / 14, 1.0]


def test_benjamini_hochberg_textbook_example():
    adjusted = benjamini_hochberg(BH_1995)
    assert adjusted == pytest.approx(BH_1995_ADJUSTED, rel=1e-12)
    assert sum(a <= 0.05 for a in adjusted) == 4


def test_benjamini_hochberg_keeps_input_order():
    perm = np.random.default_rng(0).permutation(len(BH_1995))
    adjusted = benjamini_hochberg([BH_1995[i] for i in perm])
    assert adjusted == pytest.approx([BH_1995_ADJUSTED[i] for i in perm], rel=1e-12)
    # by hand, m = 4: sorted .005 .01 .03 .04 → ×4/i = .02 .02 .04 .04 (already monotone), back in input order
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_benjamini_hochberg_monotone_and_capped():
    p = np.random.default_rng(1).uniform(0, 1, 50) ** 3
    adjusted = np.array(benjamini_hochberg(p))
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)  # a smaller p never gets a larger adjusted p
    assert np.all(adjusted >= p)
    assert np.all(adjusted <= 1.0)
    # With p ≤ 1 the largest adjusted value is p_(m) itself, so the cap only binds on out-of-range input.
    assert benjamini_hochberg([0.9, 1.0, 1.0]) == [1.0, 1.0, 1.0]
    assert benjamini_hochberg([0.02, 0.02, 0.5]) == pytest.approx([0.03, 0.03, 0.5])  # ties share a value
    assert benjamini_hochberg([]) == []
