"""The audit end to end on a synthesised corpus with planted errors: sampling, the CLI, the report, the cleaned
manifest, the cache, unreadable audio, and the gate that `caspi train` enforces."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from lhotse import CutSet

from caspi.audit.gate import check_gate
from caspi.audit.run import audit, stratified_sample
from caspi.cli import main
from caspi.config import AuditConfig
from caspi.data.cuts import cut_domain, read_manifest
from caspi.errors import DataError, GateError
from caspi.testing import metadata_cut, planted_errors, synthesize_corpus

REPORT_KEYS = {"decision", "low_quality_percentage", "low_quality_ci95", "total_samples", "low_quality_samples",
               "coverage", "domain_statistics", "flagged", "scorers", "manifest_sha256", "created_at",
               "cleaned_manifest_sha256"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, espeak):
    """96 training clips, 24 planted errors. Not the shared `synth_corpus` (24 clips): the rate scorer judges a clip
    against its own domain only from 20 clips a domain up, and the numbers below were measured on this corpus."""
    out = tmp_path_factory.mktemp("audit-corpus")
    synthesize_corpus(out, n_train=96, n_eval=0, seed=2, error_rate=0.25)
    return out


def fake_cuts(counts: dict[str, int]) -> list:
    return [metadata_cut(f"{domain}-{i:04d}", 2.0, domain=domain) for domain, n in counts.items() for i in range(n)]


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
    # 24 of 96 planted (25 %); the model-free scorers miss most wrong transcripts, so about 20 % are flagged: STOP.
    assert report["decision"] == "STOP" and code == 3
    assert report["low_quality_percentage"] > 15
    assert "PHASE 0 AUDIT RESULTS" in printed and "DECISION GATE" in printed and report["decision"] in printed
    assert report["total_samples"] == 96 and report["low_quality_samples"] == len(report["flagged"])
    lo, hi = report["low_quality_ci95"]
    assert lo <= report["low_quality_percentage"] <= hi
    assert set(report["domain_statistics"]) == {"studio", "broadcast", "whatsapp", "d1"}
    assert all(f["reasons"] for f in report["flagged"])
    planted = set(planted_errors(corpus))
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


def test_the_decision_weights_an_oversampled_domain_by_its_manifest_share(tmp_path):
    # Issue #14: 2,000 / 6,000 / 2,000 samples with 30 % / 2 % / 5 % bad (English transcripts) are 8.2 % bad; seed
    # 001's 40/40/20 sample over-represents the worst domain, so its raw share is about 13.8 % (CAUTION).
    from caspi.audit.scorers import TextScorer
    from caspi.config import TextScorerConfig

    cuts = []
    for domain, n, bad in (("whatsapp_noisy", 2000, 0.30), ("kan_clean", 6000, 0.02), ("long_tail", 2000, 0.05)):
        for i in range(n):
            text = "hello there my friend" if int((i + 1) * bad) > int(i * bad) else "שלום עולם"  # evenly spread
            cuts.append(metadata_cut(f"{domain}-{i:05d}", 2.0, text, domain))
    manifest = tmp_path / "m.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    config = AuditConfig(sample_fraction=0.1, workers=1)
    result = audit(manifest, tmp_path / "out", config, progress=False, scorers=[TextScorer(TextScorerConfig())])
    report = result.report
    stats = report["domain_statistics"]
    assert {d: s["samples"] for d, s in stats.items()} == {"whatsapp_noisy": 400, "kan_clean": 400, "long_tail": 200}
    assert {d: s["population"] for d, s in stats.items()} == {"whatsapp_noisy": 2000, "kan_clean": 6000,
                                                              "long_tail": 2000}
    assert stats["kan_clean"]["weight"] == pytest.approx(0.6)
    weighted = sum(s["weight"] * s["low_quality_percentage"] for s in stats.values())
    assert report["low_quality_percentage"] == pytest.approx(weighted)  # only hard failures: nothing to net off
    assert 12 < report["sample_low_quality_percentage"] < 16 and 6.5 < report["low_quality_percentage"] < 10
    assert result.decision == "PROCEED"
    lo, hi = report["low_quality_ci95"]
    assert lo < report["low_quality_percentage"] < hi
    # Proportional sampling: the estimate is the raw share.
    proportional = audit(manifest, tmp_path / "out2", AuditConfig(sample_fraction=0.1, workers=1,
                                                                  domain_shares={"whatsapp_noisy": 2,
                                                                                 "kan_clean": 6, "long_tail": 2}),
                         progress=False, scorers=[TextScorer(TextScorerConfig())])
    assert proportional.low_quality_percentage == pytest.approx(proportional.report["sample_low_quality_percentage"])


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, espeak):
    """Issue #14's held-out corpus, built unlike the demo's: seed 50, 2–8-word sentences, 150 clips in 3 domains of
    50, 21 planted errors (14 %: the truth is CAUTION), none of them a wrong transcript (which no model-free
    scorer sees)."""
    out = tmp_path_factory.mktemp("heldout")
    synthesize_corpus(out, n_train=280, n_eval=0, seed=50, error_rate=0.25, min_words=2, max_words=8)
    planted = {cut_id: record["kind"] for cut_id, record in planted_errors(out).items()}
    cuts = list(read_manifest(out / "train.jsonl.gz"))
    keep = []
    for domain in ("studio", "broadcast", "whatsapp"):
        rows = [c for c in cuts if cut_domain(c) == domain]
        keep += [c for c in rows if planted.get(c.id) not in (None, "wrong_transcript")][:7]
        keep += [c for c in rows if c.id not in planted][:43]
    CutSet.from_cuts(keep).to_file(out / "heldout.jsonl.gz")
    return out / "heldout.jsonl.gz", {c.id for c in keep if c.id in planted}


def test_rate_false_alarms_in_small_domains_do_not_decide(heldout, tmp_path):
    # Before issue #14 (|z| > 3 at any domain size, every flag counted) 3 clean clips were flagged rate_low and the
    # decision was STOP at 15.3 %; the truth is 14 %.
    manifest, planted = heldout
    result = audit(manifest, tmp_path / "out", AuditConfig(workers=1), all_samples=True, progress=False)
    report = result.report
    flagged = {f["id"]: f["reasons"] for f in report["flagged"]}
    false_alarms = [r for i, r in flagged.items() if i not in planted]
    assert len(planted) == 21 and len(flagged.keys() & planted) >= 19
    assert len(false_alarms) <= 1 and all(set(r) <= {"rate_low", "rate_high"} for r in false_alarms)
    assert report["hard_failure_samples"] + report["soft_only_samples"] == len(flagged)
    assert report["estimate"]["expected_false_alarms"] > 0
    assert report["low_quality_percentage"] < report["sample_low_quality_percentage"]
    assert result.decision == "CAUTION"


# ---------------------------------------------------------------------------------------- the cache (issue #14, 1)


def copy_corpus(corpus, out, n: int) -> tuple[list[dict], object]:
    """The first `n` cuts of `corpus` with their audio copied under `out` (so a test can replace files), and the
    manifest's path."""
    import shutil

    lines = gzip.open(corpus / "train.jsonl.gz", "rt", encoding="utf-8").read().splitlines()[:n]
    cuts = [json.loads(x) for x in lines]
    (out / "audio").mkdir(parents=True)
    for c in cuts:
        source = c["recording"]["sources"][0]
        copy = out / "audio" / f"{c['id']}.flac"
        shutil.copy(source["source"], copy)
        source["source"] = str(copy)
    return cuts, write_cuts(cuts, out / "m.jsonl.gz")


def write_cuts(cuts: list[dict], path):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in cuts)
    return path


def set_text(cut: dict, text: str) -> None:
    cut["supervisions"][0]["text"] = text


def test_changed_transcripts_and_replaced_audio_are_measured_again(corpus, tmp_path):
    import numpy as np
    import soundfile as sf

    planted = set(planted_errors(corpus))
    cuts, manifest = copy_corpus(corpus, tmp_path, 40)
    out, config = tmp_path / "p0", AuditConfig(workers=1)
    first = audit(manifest, out, config, all_samples=True, progress=False)
    assert first.measured == 3 * 40 and set(first.measured_pairs) == {(c["id"], s) for c in cuts
                                                                       for s in ("text", "rate", "vad")}
    flagged_before = {f["id"] for f in first.report["flagged"]}
    clean = [c for c in cuts if c["id"] not in planted | flagged_before]
    texts, audios = clean[:3], clean[3:5]
    set_text(texts[0], "this transcript is now in English")
    set_text(texts[1], texts[1]["supervisions"][0]["text"] * 4)  # four times the text in the same audio
    set_text(texts[2], "")
    for c in audios:  # new content at the same path: silence of the same length
        path = c["recording"]["sources"][0]["source"]
        sf.write(path, np.zeros(c["recording"]["num_samples"], dtype=np.float32), 16000)
    write_cuts(cuts, manifest)

    again = audit(manifest, out, config, all_samples=True, progress=False)
    expected = {(c["id"], s) for c in texts for s in ("text", "rate", "vad")} | {(c["id"], "vad") for c in audios}
    assert set(again.measured_pairs) == expected and again.measured == len(expected)
    flagged = {f["id"]: f for f in again.report["flagged"]}
    english = flagged[texts[0]["id"]]
    assert english["reasons"] == ["latin_script"] and english["text"]["latin_share"] == 1
    assert "rate_high" in flagged[texts[1]["id"]]["reasons"]
    assert flagged[texts[2]["id"]]["reasons"][0] == "empty_transcript"
    for c in audios:
        assert flagged[c["id"]]["reasons"] == ["no_speech"] and flagged[c["id"]]["vad"]["speech_s"] == 0
    assert audit(manifest, out, config, all_samples=True, progress=False).measured == 0


def test_unreadable_audio_is_retried_on_every_run(corpus, tmp_path, monkeypatch):
    import caspi.audit.run as run
    from caspi.errors import AudioError

    cuts, manifest = copy_corpus(corpus, tmp_path, 8)
    real = run.load_cut_audio
    victim = cuts[2]["id"]

    def offline(cut, label=None):  # the file's mount is away: nothing about the audio's identity changes
        if cut.id == victim:
            raise AudioError(f"cut {cut.id}: cannot load audio (mount offline)")
        return real(cut, label)

    monkeypatch.setattr(run, "load_cut_audio", offline)
    out, config = tmp_path / "p0", AuditConfig(workers=1)
    first = audit(manifest, out, config, all_samples=True, progress=False)
    assert next(f for f in first.report["flagged"] if f["id"] == victim)["reasons"] == ["unreadable"]
    monkeypatch.setattr(run, "load_cut_audio", real)
    again = audit(manifest, out, config, all_samples=True, progress=False)
    assert again.measured_pairs == [(victim, "vad")]
    assert victim not in {f["id"] for f in again.report["flagged"] if "unreadable" in f["reasons"]}


def fake_run(root, step: int, weights: float):
    """A Caspi run folder's skeleton whose `latest` checkpoint is `step` with a weights file of value `weights`."""
    import torch
    from safetensors.torch import save_file

    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(json.dumps({"recipe": {"name": "r1", "model": {"tiny": "xs"}}}))
    folder = root / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    save_file({"w": torch.full((4,), weights)}, str(folder / "trainable.safetensors"))
    (root / "checkpoints" / "latest").write_text(folder.name)


def test_asr_measurements_follow_the_run_as_it_trains_further(corpus, tmp_path):
    from types import SimpleNamespace

    from caspi.audit.scorers import AsrScorer, TextScorer
    from caspi.config import AsrScorerConfig, TextScorerConfig

    run_dir = tmp_path / "round1"
    fake_run(run_dir, 100, 0.0)

    def decode(model, processor, audios, **kwargs):  # what the run's newest weights would say
        return [f"hypothesis of {(run_dir / 'checkpoints' / 'latest').read_text()}"] * len(audios)

    def scorers():
        asr = AsrScorer(AsrScorerConfig(enabled=True, model=str(run_dir)),
                        model=(None, None, SimpleNamespace(name="fake", decode=decode, max_audio_seconds=None)))
        return [TextScorer(TextScorerConfig()), asr]

    _, manifest = copy_corpus(corpus, tmp_path, 6)
    out, config = tmp_path / "p0", AuditConfig(workers=1)

    def run_audit():
        result = audit(manifest, out, config, all_samples=True, progress=False, scorers=scorers())
        return result, Counter(s for _, s in result.measured_pairs)

    first, made = run_audit()
    assert made == {"text": 6, "asr": 6}
    assert run_audit()[1] == {}
    fake_run(run_dir, 200, 1.0)  # the run trained further: `latest` moved
    result, made = run_audit()
    assert made == {"asr": 6}
    assert {f["asr"]["hypothesis"] for f in result.report["flagged"]} == {"hypothesis of step-000200"}
    fake_run(run_dir, 200, 2.0)  # the same checkpoint's weights rewritten
    assert run_audit()[1] == {"asr": 6}


# ------------------------------------------------------------------------------------- cleaning (issue #14, 3)


def test_cleaning_scores_every_sample_not_only_the_decision_sample(corpus, tmp_path):
    manifest = corpus / "train.jsonl.gz"
    cuts = list(read_manifest(manifest))
    planted = {cut_id: record["kind"] for cut_id, record in planted_errors(corpus).items()}
    config = AuditConfig(workers=1, sample_fraction=0.25, proceed_below=50, stop_above=60)
    sampled = {c.id for c in stratified_sample(cuts, 0.25, config.seed)}
    hard_outside = {i for i, kind in planted.items()
                    if i not in sampled and kind in ("english_text", "silence_or_noise")}
    assert len(hard_outside) >= 5  # the test means something: planted errors nobody in the sample looked at

    result = audit(manifest, tmp_path / "p0", config, progress=False)
    report = result.report
    assert report["total_samples"] == report["decision_sample"]["scored_samples"] == len(sampled)
    cleaning = report["cleaning"]
    assert cleaning["mode"] == "all" and cleaning["scored_samples"] == 96
    assert cleaning["scorers"] == ["text", "rate", "vad"]
    cleaned = {c.id for c in read_manifest(result.cleaned_path)}
    removed = [json.loads(x) for x in (tmp_path / "p0" / "removed.jsonl").read_text().splitlines()]
    assert not hard_outside & cleaned
    assert cleaning["removed_samples"] == len(removed) == 96 - len(cleaned) and cleaning["kept_samples"] == len(cleaned)
    assert {r["id"] for r in removed} | cleaned == {c.id for c in cuts} and all(r["reasons"] for r in removed)
    # The cheap scorers judge every sample against its whole domain: the same removals as auditing everything.
    everything = audit(manifest, tmp_path / "all", config, all_samples=True, progress=False)
    assert cleaned == {c.id for c in read_manifest(everything.cleaned_path)}
    assert everything.report["cleaning"]["scored_samples"] == everything.report["decision_sample"]["scored_samples"]
    assert check_gate(result.report_path, result.cleaned_path).manifest_matches


def test_clean_none_writes_no_cleaned_manifest_and_the_gate_takes_only_the_audited_one(corpus, tmp_path, capsys):
    manifest = corpus / "train.jsonl.gz"
    out = tmp_path / "p0"
    lenient = AuditConfig(workers=1, sample_fraction=0.25, proceed_below=50, stop_above=60)
    first = audit(manifest, out, lenient, progress=False)
    assert first.cleaned_path.is_file()
    result = audit(manifest, out, lenient.model_copy(update={"clean": "none"}), progress=False)
    assert result.cleaned_path is None and result.measured == 0
    assert not (out / "cleaned.jsonl.gz").exists() and not (out / "removed.jsonl").exists()  # not vouched for
    report = result.report
    assert report["cleaned_manifest"] is None and report["cleaned_manifest_sha256"] is None
    assert report["cleaning"]["mode"] == "none" and report["cleaning"]["scored_samples"] == 0
    assert check_gate(result.report_path, manifest).manifest_matches
    other = tmp_path / "other.jsonl.gz"
    CutSet.from_cuts(list(read_manifest(manifest))[:5]).to_file(other)
    with pytest.raises(GateError, match="another manifest"):
        check_gate(result.report_path, other)
    capsys.readouterr()
    main(["audit", "--manifest", str(manifest), "--out", str(out), "--clean", "none", "--quiet"])
    assert "cleaned manifest  none: no cleaned manifest written (audit.clean is none)" in capsys.readouterr().out


def test_model_identity_follows_a_folders_content_and_pins_hub_revisions(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from caspi.audit.scorers import model_identity

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    first = model_identity(str(folder))
    assert model_identity(str(folder)) == first
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert model_identity(str(folder)) != first
    # A hub id: the commit its local copy resolves to, else the name with a warning.
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--asr"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_identity("org/asr") == f"hub:org/asr@{sha}"
    capsys.readouterr()
    assert model_identity("org/elsewhere").endswith(":unresolved")
    assert "cannot resolve the hub model 'org/elsewhere'" in capsys.readouterr().err


# ---------------------------------------------------------------------- the loss scorer (issue #16, section 2.4)


def test_the_loss_scorer_in_the_audit_its_report_and_its_cache(tone_model, tone_manifest, tmp_path):
    import re

    import torch
    from transformers import Qwen3ASRForConditionalGeneration

    from caspi.audit.run import render_summary

    model, processor, _ = tone_model
    export = tmp_path / "round1"  # the model as a folder, loaded by `load_model` like a user's Round 1
    model.save_pretrained(export)
    processor.save_pretrained(export)
    config = AuditConfig(workers=1, scorers={"rate": {"enabled": False}, "vad": {"enabled": False},  # tones, no speech
                                             "loss": {"enabled": True, "model": str(export),
                                                      "min_domain_samples": 4}})
    out = tmp_path / "p0"
    first = audit(tone_manifest, out, config, all_samples=True, progress=False)
    assert Counter(s for _, s in first.measured_pairs) == {"text": 16, "loss": 16}
    report = first.report
    assert report["visibility"] == {"loss": {"sees": ["tones"], "cannot_see": ["noise"]}}
    assert report["domain_statistics"]["tones"]["loss"]["swap_recall"] == 1.0
    assert report["domain_statistics"]["noise"]["loss"]["swap_recall"] == 0.0
    # Blind in the noise, the scorer flags nothing there, so none of its false alarms are netted off there.
    expected = {d: s["expected_false_alarms"] for d, s in report["domain_statistics"].items()}
    assert expected["noise"] == 0.0 and expected["tones"] == pytest.approx(8 * 0.00621, rel=0.01)  # 8 clips, none hard
    (entry,) = report["flagged"]  # the tone that carries another tone's sentence, and nothing in the noise
    assert entry["id"] == "tones-3" and entry["reasons"] == ["loss_outlier"]
    assert re.match(r"loss 1\.\d\d nats/token, domain median 0\.00 \(z \+\d+", entry["notes"]["loss_outlier"])
    assert entry["loss"]["tokens"] == 10
    assert "tones-3" not in {c.id for c in read_manifest(first.cleaned_path)}
    summary = render_summary(report)
    assert "The loss scorer vouches for: tones." in summary and "It cannot see noise:" in summary
    assert "loss scorer: sees: 100% of 8 swapped transcripts would be flagged" in summary

    # Cached under the model's content: a re-run measures nothing, the same folder with other weights everything.
    assert audit(tone_manifest, out, config, all_samples=True, progress=False).measured == 0
    trained_further = Qwen3ASRForConditionalGeneration.from_pretrained(export)
    with torch.no_grad():
        trained_further.lm_head.weight.mul_(1.01)
    trained_further.save_pretrained(export)
    again = audit(tone_manifest, out, config, all_samples=True, progress=False)
    assert Counter(s for _, s in again.measured_pairs) == {"loss": 16}
    assert [f["id"] for f in again.report["flagged"]] == ["tones-3"]
