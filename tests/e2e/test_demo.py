"""The main job through the real CLI: `caspi demo --size quick` (the same steps as `make demo` on a few clips).

Its numbers mean nothing at this size; what is checked is the workflow: Round 1 → Phase 0 with Round 1 as a scorer
→ Round 2 from Round 1's weights, preempted by a SIGTERM and resumed → eval and compare → report → summary. The
full size's targets are measured by benchmarks/bench_demo.py.
"""

import gzip
import json
import shutil

import pytest

from caspi.cli import main
from caspi.data.synth import DOMAINS
from caspi.demo import demo_precision, find_recipes, render_summary

pytestmark = pytest.mark.espeak


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out), "--size", "quick", "--seed", "1"]) == 0
    return out


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_round2_starts_from_round1_gated_by_the_audit_and_survives_a_sigterm(demo):
    meta = json.loads((demo / "round2" / "run.json").read_text(encoding="utf-8"))
    assert meta["init_from"]["kind"] == "caspi_run" and meta["init_from"]["run"] == str(demo / "round1")
    assert meta["recipe"]["data"]["train_manifest"] == str(demo / "phase0" / "cleaned.jsonl.gz")
    assert meta["gate"]["report"] == str(demo / "phase0" / "alignment_report.json")
    assert len(meta["resumes"]) == 1  # the SIGTERM's checkpoint, resumed once
    codes = [c["exit_code"] for c in _jsonl(demo / "round2" / "commands.jsonl")]
    assert codes == [143, 0]
    assert (demo / "round2" / "final" / "config.json").is_file()
    phases = {r.get("phase") for r in _jsonl(demo / "round2" / "metrics.jsonl") if r.get("phase")}
    assert phases == {"Strategy B", "Strategy A"}


def test_the_audit_used_round1_and_cleaned_the_data(demo):
    report = json.loads((demo / "phase0" / "alignment_report.json").read_text(encoding="utf-8"))
    assert "loss" in report["visibility"]
    removed = {r["id"] for r in _jsonl(demo / "phase0" / "removed.jsonl")}
    cleaned = {json.loads(line)["id"] for line in gzip.open(demo / "phase0" / "cleaned.jsonl.gz", "rt",
                                                            encoding="utf-8")}
    assert removed and not removed & cleaned and len(removed) + len(cleaned) == 48


def test_summary_compares_both_rounds_on_every_domain(demo):
    summary = json.loads((demo / "summary.json").read_text(encoding="utf-8"))
    assert summary["decision"] in ("PROCEED", "CAUTION")
    assert [r["dataset"] for r in summary["rounds"]] == [*sorted(DOMAINS), "overall"]
    assert all(r["utterances"] == 4 for r in summary["rounds"][:-1])
    key = summary["audit_answer_key"]["overall"]
    assert key["planted"] == 4 and key["removed"] == len(_jsonl(demo / "phase0" / "removed.jsonl"))
    assert set(summary["seconds"]) == {"synth", "plan", "round 1", "audit", "doctor", "round 2", "eval", "report",
                                       "total"}
    assert summary["precision"] == demo_precision()  # bf16 where this CPU has it natively, else fp32
    for stage in ("round1", "round2"):
        meta = json.loads((demo / stage / "run.json").read_text(encoding="utf-8"))
        assert meta["recipe"]["train"]["precision"] == summary["precision"]
    assert (demo / "summary.md").read_text(encoding="utf-8").strip() == render_summary(summary)
    page = (demo / "report" / "report.html").read_text(encoding="utf-8")
    assert "round 1" in page and "round 2" in page and "<audio" in page


def test_a_rerun_keeps_the_finished_steps_and_another_seed_is_refused(demo, capsys):
    assert main(["demo", "--out", str(demo), "--size", "quick", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("kept from an earlier demo") == 8  # 2 synth, plan, round 1, audit, round 2, 2 evals
    assert main(["demo", "--out", str(demo), "--size", "quick", "--seed", "2"]) == 2
    assert "holds a demo of seed 1" in capsys.readouterr().err


def test_a_stop_decision_ends_the_demo_before_round2(tmp_path, capsys):
    """The gate is the product's promise: with thresholds that make the audit say STOP, the demo stops there (exit
    3), trains no Round 2 and says so in its summary."""
    recipes = tmp_path / "recipes"
    shutil.copytree(find_recipes(), recipes)
    round2 = recipes / "demo-round2.yaml"
    stop_always = "audit:\n  proceed_below: 0.0\n  stop_above: 0.0\n"
    round2.write_text(round2.read_text(encoding="utf-8").replace("audit:\n", stop_always, 1), encoding="utf-8")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "quick", "--recipes", str(recipes)]) == 3
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["decision"] == "STOP" and summary["rounds"] == [] and summary["report"] is None
    assert not (out / "round2").exists()
    assert "The gate said STOP: no Round 2 was trained" in capsys.readouterr().out


def test_plan_ran_before_round1_and_doctor_before_round2(demo):
    """The plan's steps are the steps Round 1 trained, its memory is the one phase's, and it measured a throughput;
    the doctor passed Round 2's pre-flight (a FAIL would have ended the demo) with the gate's check among them."""
    summary = json.loads((demo / "summary.json").read_text(encoding="utf-8"))
    plan = summary["plan"]
    trained = max(r["step"] for r in _jsonl(demo / "round1" / "metrics.jsonl") if r.get("kind") == "train")
    assert plan["steps"] == trained
    assert plan["samples_per_s"] > 0 and plan["predicted_minutes"] > 0 and plan["memory_gib"] > 0
    doctor = (demo / "doctor" / "round2.txt").read_text(encoding="utf-8")
    assert "phase0" in doctor and "FAIL" not in doctor.replace("0 fail", "")
    assert "`caspi plan` of Round 1" in (demo / "summary.md").read_text(encoding="utf-8")
