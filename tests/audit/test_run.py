"""The audit end to end on a synthesised corpus with planted errors: sampling, the CLI, the report, the cleaned
manifest, the cache, unreadable audio, and the gate that `caspi train` enforces."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
from lhotse import CutSet

from caspi.audit.gate import check_gate
from caspi.audit.run import audit, stratified_sample
from caspi.cli import main
from caspi.config import AuditConfig
from caspi.data import synth
from caspi.data.cuts import cut_domain, make_cut, read_manifest
from caspi.errors import DataError, GateError

REPORT_KEYS = {"decision", "low_quality_percentage", "low_quality_ci95", "total_samples", "low_quality_samples",
               "coverage", "domain_statistics", "flagged", "scorers", "manifest_sha256", "created_at",
               "cleaned_manifest_sha256"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    out = tmp_path_factory.mktemp("audit-corpus")
    synth.synthesize(out, 96, 0, seed=2, error_rate=0.25, workers=2, progress=False)
    return out


def fake_cuts(counts: dict[str, int]) -> list:
    cuts = []
    for domain, n in counts.items():
        for i in range(n):
            cuts.append(make_cut(f"{domain}-{i:04d}", "/nonexistent.flac", 32000, "שלום", domain=domain))
    return cuts


def test_stratified_sample_is_proportional_and_deterministic():
    cuts = fake_cuts({"a": 600, "b": 300, "c": 100})
    chosen = stratified_sample(cuts, 0.1, seed=7)
    assert [c.id for c in chosen] == [c.id for c in stratified_sample(cuts, 0.1, seed=7)]
    assert [c.id for c in chosen] != [c.id for c in stratified_sample(cuts, 0.1, seed=8)]
    counts = {d: sum(cut_domain(c) == d for c in chosen) for d in "abc"}
    assert counts == {"a": 60, "b": 30, "c": 10}


def test_seed_mix_when_domains_are_named_noisy_clean_long_tail():
    cuts = fake_cuts({"whatsapp_noisy": 2000, "kan_clean": 6000, "long_tail": 2000})
    chosen = stratified_sample(cuts, 0.1, seed=0)
    counts = {d: sum(cut_domain(c) == d for c in chosen) for d in ("whatsapp_noisy", "kan_clean", "long_tail")}
    assert counts == {"whatsapp_noisy": 400, "kan_clean": 400, "long_tail": 200}  # seed 001's 40/40/20


def test_domain_shares_with_a_rest_group_and_unknown_domains():
    cuts = fake_cuts({"a": 500, "b": 300, "c": 200})
    chosen = stratified_sample(cuts, 0.1, seed=0, domain_shares={"a": 1, "*": 1})
    counts = {d: sum(cut_domain(c) == d for c in chosen) for d in "abc"}
    assert counts["a"] == 50 and counts["b"] + counts["c"] == 50
    with pytest.raises(DataError, match="domains the manifest does not have: zz"):
        stratified_sample(cuts, 0.1, seed=0, domain_shares={"zz": 1})


def test_audit_cli_report_cleaned_manifest_and_cache(corpus, tmp_path, capsys):
    out = tmp_path / "phase0"
    code = main(["audit", "--manifest", str(corpus / "train.jsonl.gz"), "--out", str(out), "--all", "--quiet"])
    printed = capsys.readouterr().out
    report = json.loads((out / "alignment_report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert code == (3 if report["decision"] == "STOP" else 0)
    assert "PHASE 0 AUDIT RESULTS" in printed and "DECISION GATE" in printed and report["decision"] in printed
    assert report["total_samples"] == 96 and report["low_quality_samples"] == len(report["flagged"])
    lo, hi = report["low_quality_ci95"]
    assert lo <= report["low_quality_percentage"] <= hi
    assert set(report["domain_statistics"]) == {"studio", "broadcast", "whatsapp", "d1"}
    assert all(f["reasons"] for f in report["flagged"])
    planted = {json.loads(x)["id"] for x in (corpus / "planted_errors.jsonl").read_text().splitlines()}
    flagged = {f["id"] for f in report["flagged"]}
    assert len(flagged & planted) >= len(planted) // 2  # most planted errors are caught (measured in benchmarks)
    cleaned = {c.id for c in read_manifest(out / "cleaned.jsonl.gz")}
    assert len(cleaned) == 96 - len(flagged) and not cleaned & flagged
    # A re-run with other thresholds reuses every cached measurement and changes only the decision's inputs.
    config = AuditConfig(scorers={"rate": {"max_abs_z": 2.0}})
    again = audit(corpus / "train.jsonl.gz", out, config, all_samples=True, progress=False)
    assert again.measured == 0 and again.report["low_quality_samples"] >= report["low_quality_samples"]


def test_unreadable_audio_is_flagged_not_fatal(corpus, tmp_path):
    lines = gzip.open(corpus / "train.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    cuts = [json.loads(x) for x in lines[:12]]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"this is not audio")
    cuts[3]["recording"]["sources"][0]["source"] = str(broken)
    manifest = tmp_path / "m.jsonl.gz"
    with gzip.open(manifest, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in cuts)
    result = audit(manifest, tmp_path / "out", AuditConfig(workers=1), all_samples=True, progress=False)
    entry = next(f for f in result.report["flagged"] if f["id"] == cuts[3]["id"])
    assert entry["reasons"] == ["unreadable"] and "error" in entry


def test_a_stop_report_stops_training_and_the_cleaned_manifest_passes_a_proceed_gate(corpus, tmp_path, capsys):
    manifest = corpus / "train.jsonl.gz"
    # 25 % planted errors: with the default 10/15 % thresholds, STOP.
    assert main(["audit", "--manifest", str(manifest), "--out", str(tmp_path / "p0"), "--all", "--quiet"]) == 3
    report = tmp_path / "p0" / "alignment_report.json"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nmodel: {{tiny: xs}}\nhardware: {{accelerator: cpu}}\n"
                      f"data: {{train_manifest: {manifest}}}\ngate: {{report: {report}}}\n")
    capsys.readouterr()
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 3
    assert "Phase 0 says STOP" in capsys.readouterr().err
    # With thresholds that accept it, the cleaned manifest is what the report vouches for.
    lenient = AuditConfig(proceed_below=50, stop_above=60)
    result = audit(manifest, tmp_path / "p1", lenient, all_samples=True, progress=False)
    assert result.decision == "PROCEED"
    assert check_gate(result.report_path, result.cleaned_path).manifest_matches
    other = tmp_path / "other.jsonl.gz"
    CutSet.from_cuts(list(read_manifest(manifest))[:5]).to_file(other)
    with pytest.raises(GateError, match="another manifest"):
        check_gate(result.report_path, other)
