"""The gate's decision rule, Wilson interval and the refusal that training calls."""

import json
import math

import pytest

from caspi.audit.gate import (
    CAUTION,
    PROCEED,
    STOP,
    Stratum,
    check_gate,
    decide,
    file_sha256,
    stratified_share,
    wilson_interval,
)
from caspi.errors import GateError


@pytest.mark.parametrize("pct, expected", [(0, PROCEED), (9.99, PROCEED), (10, CAUTION), (15, CAUTION),
                                           (15.01, STOP), (100, STOP)])
def test_decide(pct, expected):
    assert decide(pct) == expected


def test_decide_custom_thresholds():
    assert decide(4.0, proceed_below=3, stop_above=5) == CAUTION
    assert decide(6.0, proceed_below=3, stop_above=5) == STOP


def _slow_wilson(k, n, z=1.959963984540054):
    # Textbook form: solve |p̂ − p| = z·sqrt(p(1−p)/n) for p (the two roots of a quadratic).
    p_hat = k / n
    a = 1 + z * z / n
    b = -(2 * p_hat + z * z / n)
    c = p_hat * p_hat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k, n", [(10, 100), (0, 50), (50, 50), (3, 250), (37, 400)])
def test_wilson_matches_textbook_quadratic(k, n):
    lo, hi = wilson_interval(k, n)
    slo, shi = _slow_wilson(k, n)
    assert lo == pytest.approx(max(0.0, slo), abs=1e-9) and hi == pytest.approx(min(1.0, shi), abs=1e-9)
    assert lo <= k / n <= hi


def test_wilson_known_value():
    # statsmodels.proportion_confint(10, 100, method="wilson") = (0.05522914, 0.17436566)
    lo, hi = wilson_interval(10, 100)
    assert (round(lo, 6), round(hi, 6)) == (0.055229, 0.174366)


def _report(tmp_path, manifest, decision, pct=5.0, cleaned=None):
    path = tmp_path / "alignment_report.json"
    path.write_text(json.dumps({
        "decision": decision, "low_quality_percentage": pct, "low_quality_ci95": [pct - 2, pct + 2],
        "total_samples": 200, "manifest_sha256": file_sha256(manifest),
        "cleaned_manifest_sha256": file_sha256(cleaned) if cleaned else None,
    }))
    return path


def test_gate_passes_proceed_and_caution(tmp_path):
    manifest = tmp_path / "m.jsonl.gz"
    manifest.write_bytes(b"cuts")
    for decision in (PROCEED, CAUTION):
        record = check_gate(_report(tmp_path, manifest, decision), manifest)
        assert record.decision == decision and not record.forced and record.manifest_matches


def test_gate_accepts_the_cleaned_manifest(tmp_path):
    manifest, cleaned = tmp_path / "m.jsonl.gz", tmp_path / "cleaned.jsonl.gz"
    manifest.write_bytes(b"all cuts")
    cleaned.write_bytes(b"clean cuts")
    assert check_gate(_report(tmp_path, manifest, PROCEED, cleaned=cleaned), cleaned).manifest_matches


def test_gate_refuses_stop_with_numbers(tmp_path):
    manifest = tmp_path / "m.jsonl.gz"
    manifest.write_bytes(b"cuts")
    with pytest.raises(GateError, match=r"STOP: 22\.5 % low-quality samples \(95 % CI 20\.5–24\.5 %\) of 200") as e:
        check_gate(_report(tmp_path, manifest, STOP, pct=22.5), manifest)
    assert e.value.exit_code == 3
    forced = check_gate(_report(tmp_path, manifest, STOP, pct=22.5), manifest, force=True)
    assert forced.forced and forced.decision == STOP


def test_gate_refuses_another_manifest(tmp_path):
    audited, other = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    audited.write_bytes(b"audited")
    other.write_bytes(b"something else")
    with pytest.raises(GateError, match="made from another manifest"):
        check_gate(_report(tmp_path, audited, PROCEED), other)
    assert not check_gate(_report(tmp_path, audited, PROCEED), other, force=True).manifest_matches


def test_gate_missing_or_broken_report(tmp_path):
    manifest = tmp_path / "m.jsonl.gz"
    manifest.write_bytes(b"cuts")
    with pytest.raises(GateError, match="report not found"):
        check_gate(tmp_path / "none.json", manifest)
    broken = tmp_path / "r.json"
    broken.write_text('{"decision": "PROCEED"}')
    with pytest.raises(GateError, match="not a Phase 0 report"):
        check_gate(broken, manifest)


def test_wilson_is_scipys():
    from scipy.stats import binomtest

    ci = binomtest(3, 250).proportion_ci(method="wilson")
    assert wilson_interval(3, 250) == pytest.approx((ci.low, ci.high))


def test_stratified_share_weights_strata_by_their_manifest_share():
    # Issue #14's example: 2,000 / 6,000 / 2,000 samples, 30 % / 2 % / 5 % bad, sampled 40/40/20 (seed 001's mix).
    strata = [Stratum(2000, 400, 120), Stratum(6000, 400, 8), Stratum(2000, 200, 10)]
    est = stratified_share(strata)
    assert est.share == pytest.approx(0.082)
    assert decide(100 * est.share) == PROCEED and decide(100 * 138 / 1000) == CAUTION  # the raw share: 13.8 %
    lo, hi = est.ci95
    assert lo < est.share < hi and hi - lo < 0.05


def test_stratified_share_is_the_plain_share_and_wilson_interval_when_proportional():
    strata = [Stratum(2000, 200, 60), Stratum(6000, 600, 12), Stratum(2000, 200, 10)]
    est = stratified_share(strata)
    assert est.share == pytest.approx(82 / 1000) and est.design_effect == 1.0
    assert est.ci95 == pytest.approx(wilson_interval(82, 1000), abs=1e-9)
    assert stratified_share([Stratum(100, 100, 0)]).ci95 == pytest.approx(wilson_interval(0, 100), abs=1e-9)


def test_stratified_interval_widens_when_a_heavy_stratum_is_undersampled():
    # A stratum holding 90 % of the manifest, sampled 20 times: far less precise than 1,000 random samples.
    est = stratified_share([Stratum(9000, 20, 4), Stratum(1000, 980, 49)])
    assert est.design_effect > 5 and est.effective_samples < 200
    lo, hi = est.ci95
    assert hi - lo > 2 * (wilson_interval(round(est.share * 1000), 1000)[1] - wilson_interval(round(est.share * 1000),
                                                                                               1000)[0])
