"""The gate's decision rule, Wilson interval and the refusal that training calls."""

import json
import math

import pytest

from caspi.audit.gate import CAUTION, PROCEED, STOP, check_gate, decide, file_sha256, wilson_interval
from caspi.errors import GateError


@pytest.mark.parametrize("pct, expected", [(0, PROCEED), (9.99, PROCEED), (10, CAUTION), (15, CAUTION),
                                           (15.01, STOP), (100, STOP)])
def test_decide(pct, expected):
    assert decide(pct) == expected


def test_decide_custom_thresholds():
    assert decide(4.0, proceed_below=3, stop_above=5) == CAUTION
    assert decide(6.0, proceed_below=3, stop_above=5) == STOP


def _slow_wilson(k, n, z=1.959964):
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
