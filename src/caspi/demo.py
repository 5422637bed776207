"""`caspi demo`: the seeds' Round 2 end to end on CPU, every step a real `caspi` command.

    caspi demo --out runs/demo --seed 0         # the main job: about 10 minutes on 2 CPU cores
    caspi demo --out /tmp/demo --size quick     # the same steps on a few clips (the CI end-to-end test)

A user's Round 2 starts from a Round-1 model, new and noisier data, and a question: is Round 2 better, and where?
The demo plays all of it on synthetic Hebrew (espeak-ng), in OUT:

    data/round1/    1. `caspi synth`: Round 1's data, clean studio speech (its own seed)
    data/round2/       `caspi synth`: Round 2's new data, all four domains, 8 % planted errors; its eval split (every
                       domain, never corrupted) is the eval set of both rounds
    plan/           2. `caspi plan --measure` of Round 1: parameters, memory, steps, and the hours its measured
                       throughput predicts (the summary sets them beside the time Round 1 really took)
    round1/         3. `caspi train` recipes/demo-cpu.yaml: a tiny Qwen3-ASR from scratch on the studio clips. It
                       stands in for the Round-1 model a user has (in the seeds, a 1.7B fine-tune)
    phase0/         4. `caspi audit --all` of Round 2's data with the model-free scorers and Round 1's teacher-forced
                       loss (recipes/demo-round2.yaml's audit section): decision, report, cleaned manifest; exit 3
                       (STOP) ends the demo there, as it would end a real run
    doctor/            `caspi doctor` of Round 2's recipe, once its data, Round 1 and the audit exist: a FAIL ends
                       the demo before the trainer starts, as a pre-flight check should
    round2/         5. `caspi train` recipes/demo-round2.yaml from Round 1's weights (`model.init_from`) on the
                       cleaned manifest, gated by the audit's report, B→A. It runs as a child process that gets a
                       SIGTERM after its first checkpoint (a preemption: it saves and exits 143); the same command
                       then resumes it on the exact next batch
    eval/round1/    6. `caspi eval` of both rounds on the eval set (WER and CER with intervals, per domain),
    eval/round2/       `caspi compare` of the two (paired bootstrap, verdicts)
    compare/
    report/         7. `caspi report`: report.html (the audit's flagged clips with players, Round 1 vs Round 2, the
                       training curves, the commands)
    summary.json    8. the closing summary: the decision, how the audit did against the answer key, the per-domain
    summary.md         table of both rounds, the seconds each step took

Every command is recorded in the commands.jsonl of its --out folder (the report lists them). Run the demo again
into the same OUT (same seed and size) and the finished steps are kept: an interrupted demo goes on where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from caspi.data.cuts import cut_domain, read_manifest, write_text_atomic
from caspi.data.synth import DOMAINS
from caspi.errors import ConfigError, TrainingError
from caspi.models.loading import CHECKPOINTS, LATEST_FILE
from caspi.train.preempt import EXIT_REQUEUE
from caspi.train.resources import cpu_has_native_bf16

PLAN_FILE, DOCTOR_FILE = "plan/round1.json", "doctor/round2.txt"
MARKER = "demo.json"  # in OUT: the demo's seed and size, so a re-run into OUT keeps only what it would make again
ROUND1_RECIPE, ROUND2_RECIPE = "demo-cpu.yaml", "demo-round2.yaml"
EXIT_STOP = 3  # `caspi audit` on a STOP decision
# Round 2's data comes from another synthesis seed than Round 1's: with the same seed, sample i would say the same
# sentence in the same voice in both corpora.
ROUND2_SEED_OFFSET = 1000


@dataclass(frozen=True)
class DemoSize:
    """How much the demo synthesises and trains. `full` is the main job; `quick` runs the same steps on a few clips
    to check the workflow (its numbers mean nothing)."""

    round1_clips: int  # studio clips Round 1 trains on
    round1_eval_clips: int  # studio clips of Round 1's in-training eval
    round1_epochs: int
    round1_eval_every: int  # optimizer steps between Round 1's in-training evals
    round2_clips: int  # Round 2's new clips, all four domains, planted errors included
    eval_clips_per_domain: int  # the eval set of both rounds
    round2_epochs: int
    round2_phase_a_epoch: int  # Strategy A (the top audio layers too) from this epoch
    round2_save_every: int  # optimizer steps between Round 2's checkpoints; the SIGTERM follows the first
    error_rate: float = 0.08  # share of Round 2's clips with a planted error (the seeds' estimate of crowd data)


SIZES = {
    "full": DemoSize(round1_clips=1400, round1_eval_clips=60, round1_epochs=24, round1_eval_every=350,
                     round2_clips=1200, eval_clips_per_domain=100, round2_epochs=6, round2_phase_a_epoch=3,
                     round2_save_every=100),
    "quick": DemoSize(round1_clips=32, round1_eval_clips=8, round1_epochs=2, round1_eval_every=10,
                      round2_clips=48, eval_clips_per_domain=4, round2_epochs=3, round2_phase_a_epoch=2,
                      round2_save_every=2),
}


@dataclass
class DemoResult:
    out_dir: Path
    decision: str  # the audit's PROCEED / CAUTION / STOP
    summary: dict  # what summary.json holds
    report: Path | None  # report.html; None when the audit said STOP


def find_recipes(recipes: str | Path | None = None) -> Path:
    """The folder of the shipped recipes: `recipes`, else ./recipes, else the repository's (next to src/)."""
    candidates = [Path(recipes)] if recipes is not None else [Path("recipes"),
                                                             Path(__file__).resolve().parents[2] / "recipes"]
    for folder in candidates:
        if (folder / ROUND1_RECIPE).is_file() and (folder / ROUND2_RECIPE).is_file():
            return folder
    raise ConfigError(f"the demo's recipes ({ROUND1_RECIPE}, {ROUND2_RECIPE}) are not in "
                      f"{' or '.join(str(c) for c in candidates)}; run the demo from the Caspi repository or give "
                      "--recipes")


def _check_out(out: Path, seed: int, size: str) -> None:
    """OUT is new, empty, or an earlier demo of the same seed and size (whose finished steps are kept)."""
    marker = out / MARKER
    if marker.is_file():
        earlier = json.loads(marker.read_text(encoding="utf-8"))
        if (earlier.get("seed"), earlier.get("size")) != (seed, size):
            raise ConfigError(f"{out}: holds a demo of seed {earlier.get('seed')}, size {earlier.get('size')!r}; "
                              f"give another --out for seed {seed}, size {size!r}")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: not empty and not a demo folder; give a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps({"seed": seed, "size": size}) + "\n")


class _Steps:
    """Runs the demo's commands through `run` (the CLI's `main`), each once: a step whose output exists is kept.
    Times each step under its stage name (synth, round 1, audit, round 2, eval, report)."""

    def __init__(self, run: Callable[[list[str]], int], log: Callable[[str], None]):
        self.run, self.log = run, log
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, argv: list[str], done: Path | None = None, ok: tuple[int, ...] = (0,),
                 capture: Path | None = None) -> int:
        """`capture`: write what the command prints to this file instead (kept only when it succeeds, so a failed
        check runs again next time; printed when it fails)."""
        if done is not None and done.exists():
            self.log(f"kept from an earlier demo: caspi {' '.join(argv[:1])} → {done}")
            return 0
        self.log("$ caspi " + " ".join(argv) + (f"   > {capture}" if capture else ""))
        started = time.perf_counter()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed) if capture else contextlib.nullcontext():
            code = self.run(argv)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        if code not in ok:
            if capture:
                print(printed.getvalue(), end="")
            raise TrainingError(f"demo: `caspi {' '.join(argv)}` exited {code}; see its message above")
        if capture:
            capture.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(capture, printed.getvalue())
        return code


def run_demo(out: str | Path, *, run: Callable[[list[str]], int], seed: int = 0, size: str = "full",
             recipes: str | Path | None = None, log: Callable[[str], None] = print) -> DemoResult:
    """The demo (module docstring) into `out`; `run(argv)` runs one caspi command and returns its exit code."""
    if size not in SIZES:
        raise ConfigError(f"demo size {size!r}: known sizes are {', '.join(SIZES)}")
    s = SIZES[size]
    out = Path(out).resolve()
    recipes = find_recipes(recipes).resolve()
    _check_out(out, seed, size)
    precision = demo_precision()
    step = _Steps(run, log)
    started = time.perf_counter()
    data1, data2 = out / "data" / "round1", out / "data" / "round2"
    round1, phase0, round2 = out / "round1", out / "phase0", out / "round2"
    eval1, eval2, compare, report = out / "eval" / "round1", out / "eval" / "round2", out / "compare", out / "report"

    # 1. data
    step("synth", ["synth", "--out", str(data1), "--n-train", str(s.round1_clips), "--n-eval",
                   str(s.round1_eval_clips), "--seed", str(seed), "--domains", "studio", "--quiet"],
         done=data1 / "eval.jsonl.gz")
    step("synth", ["synth", "--out", str(data2), "--n-train", str(s.round2_clips), "--n-eval",
                   str(s.eval_clips_per_domain * len(DOMAINS)), "--seed", str(seed + ROUND2_SEED_OFFSET),
                   "--error-rate", str(s.error_rate), "--quiet"], done=data2 / "eval.jsonl.gz")

    # 2. Round 1's plan: what it trains, the memory it needs, its steps, and the hours a measured throughput gives
    round1_overrides = [f"data.train_manifest={data1 / 'train.jsonl.gz'}",
                        f"data.eval_manifest={data1 / 'eval.jsonl.gz'}", f"train.seed={seed}",
                        f"train.epochs={s.round1_epochs}", f"eval.every_steps={s.round1_eval_every}",
                        f"eval.samples={s.round1_eval_clips}", f"train.save_every_steps={s.round1_eval_every}",
                        f"train.precision={precision}"]
    step("plan", ["plan", "--recipe", str(recipes / ROUND1_RECIPE), *round1_overrides, "--measure", "--json"],
         done=out / PLAN_FILE, capture=out / PLAN_FILE)

    # 3. Round 1 from scratch on clean studio speech
    step("round 1", ["train", "--recipe", str(recipes / ROUND1_RECIPE), "--out", str(round1), "--quiet",
                     *round1_overrides], done=round1 / "final" / "config.json")

    # 4. Phase 0 on Round 2's data, with Round 1 reading the transcripts
    code = step("audit", ["audit", "--manifest", str(data2 / "train.jsonl.gz"), "--out", str(phase0), "--all",
                          "--recipe", str(recipes / ROUND2_RECIPE), f"audit.scorers.loss.model={round1}", "--quiet"],
                done=phase0 / "alignment_report.json", ok=(0, EXIT_STOP))
    audit_report = json.loads((phase0 / "alignment_report.json").read_text(encoding="utf-8"))
    if code == EXIT_STOP or audit_report["decision"] == "STOP":
        summary = _summary(out, seed, size, precision, audit_report, None, step.seconds,
                           time.perf_counter() - started)
        return DemoResult(out, audit_report["decision"], summary, None)

    # 5. Round 2 from Round 1's weights on the cleaned data, preempted once and resumed
    round2_overrides = [f"model.init_from={round1}", f"data.train_manifest={phase0 / 'cleaned.jsonl.gz'}",
                        f"data.eval_manifest={data2 / 'eval.jsonl.gz'}",
                        f"gate.report={phase0 / 'alignment_report.json'}", f"train.seed={seed}",
                        f"train.epochs={s.round2_epochs}", f"unfreeze.phases.1.start_epoch={s.round2_phase_a_epoch}",
                        f"train.save_every_steps={s.round2_save_every}", f"eval.every_steps={s.round2_save_every}",
                        f"eval.samples={s.eval_clips_per_domain * len(DOMAINS)}", f"train.precision={precision}"]
    train2 = ["train", "--recipe", str(recipes / ROUND2_RECIPE), "--out", str(round2), "--quiet", *round2_overrides]
    if (round2 / "final" / "config.json").exists():
        log(f"kept from an earlier demo: caspi train → {round2 / 'final'}")
    else:
        # The pre-flight check of what Round 2 needs (exit 1 on a FAIL ends the demo here). Offline: a demo asks
        # the hub nothing.
        step("doctor", ["doctor", "--recipe", str(recipes / ROUND2_RECIPE), *round2_overrides, "--out", str(round2),
                        "--offline"], capture=out / DOCTOR_FILE)
        if not (round2 / CHECKPOINTS / LATEST_FILE).exists():
            preempt_after_first_checkpoint(step, train2, round2)
        step("round 2", train2)  # resumes from the checkpoint the SIGTERM saved

    # 6. both rounds on the eval set of every domain, and the comparison
    for folder, model in ((eval1, round1), (eval2, round2)):
        step("eval", ["eval", "--model", str(model), "--manifest", str(data2 / "eval.jsonl.gz"), "--out",
                      str(folder), "--recipe", str(recipes / ROUND2_RECIPE), "--quiet"], done=folder / "summary.json")
    step("eval", ["compare", str(eval1), str(eval2), "--out", str(compare), "--names", "round 1", "round 2",
                  "--quiet"])

    # 7. the page
    step("report", ["report", str(phase0), str(compare), str(round1), str(round2), "--out", str(report)])
    summary = _summary(out, seed, size, precision, audit_report, compare, step.seconds,
                       time.perf_counter() - started)
    return DemoResult(out, audit_report["decision"], summary, report / "report.html")


def demo_precision() -> str:
    """The `train.precision` of both rounds: bf16 autocast where the CPU computes bf16 in hardware (a step of the
    demo's model in 0.64x the float32 time, benchmarks/bench_cpu_bf16.py), else float32, which emulated bf16 would
    not beat."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


def preempt_after_first_checkpoint(step: _Steps, argv: list[str], run_dir: Path, poll: float = 0.05) -> None:
    """Run `caspi train` (argv) as a child process and send it a SIGTERM once its first checkpoint exists: what a
    scheduler's preemption does. The child saves at its next micro-batch boundary and exits 143 (`EXIT_REQUEUE`);
    the caller's next `caspi train` with the same argv resumes it."""
    step.log("$ caspi " + " ".join(argv) + "   (a child process; SIGTERM after its first checkpoint)")
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "caspi", *argv])
    try:
        while child.poll() is None and not (run_dir / CHECKPOINTS / LATEST_FILE).exists():
            time.sleep(poll)
        if child.poll() is None:
            latest = (run_dir / CHECKPOINTS / LATEST_FILE).read_text(encoding="utf-8").strip()
            step.log(f"demo: sending SIGTERM to the Round-2 trainer (pid {child.pid}) after its checkpoint {latest}")
            child.send_signal(signal.SIGTERM)
        code = child.wait()
    finally:
        if child.poll() is None:  # the demo itself was interrupted: leave no trainer behind
            child.terminate()
            child.wait()
    step.seconds["round 2"] = step.seconds.get("round 2", 0.0) + time.perf_counter() - started
    if code == EXIT_REQUEUE:
        step.log("demo: the trainer saved a checkpoint and exited 143 (preempted); resuming it with the same command")
    elif code == 0:
        step.log("demo: the trainer finished before the SIGTERM reached it; nothing to resume")
    else:
        raise TrainingError(f"demo: `caspi {' '.join(argv)}` exited {code} before or after the SIGTERM; see its "
                            "message above")


# ---------------------------------------------------------------------------------------------------------------
# The closing summary


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_against_answer_key(phase0: Path, corpus: Path) -> dict:
    """How the audit did against synth's answer key (planted_errors.jsonl): per domain and overall, the planted
    errors and wrong transcripts (another utterance's sentence) it removed, and the precision of what it removed.
    A demo can say this; a real run has no answer key."""
    planted = {r["id"]: r["kind"] for r in _read_jsonl(corpus / "planted_errors.jsonl")}
    removed = {r["id"] for r in _read_jsonl(phase0 / "removed.jsonl")}
    domain_of = {c.id: cut_domain(c) for c in read_manifest(corpus / "train.jsonl.gz")}

    def counts(ids: list[str]) -> dict:
        bad = [i for i in ids if i in planted]
        wrong = [i for i in bad if planted[i] == "wrong_transcript"]
        flagged = [i for i in ids if i in removed]
        return {"clips": len(ids), "planted": len(bad), "caught": sum(i in removed for i in bad),
                "wrong_transcripts": len(wrong), "wrong_caught": sum(i in removed for i in wrong),
                "removed": len(flagged), "removed_clean": sum(i not in planted for i in flagged)}

    by_domain = {d: counts([i for i, dd in domain_of.items() if dd == d]) for d in sorted(set(domain_of.values()))}
    return {"by_domain": by_domain, "overall": counts(list(domain_of))}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _summary(out: Path, seed: int, size: str, precision: str, audit_report: dict, compare: Path | None,
             seconds: dict[str, float], total: float) -> dict:
    """summary.json and summary.md in `out`, and the same table printed: the decision, the audit against the
    answer key, Round 1 vs Round 2 per domain, the seconds per stage."""
    key = audit_against_answer_key(out / "phase0", out / "data" / "round2")
    visibility = audit_report.get("visibility", {}).get("loss", {})
    rows = json.loads((compare / "comparison.json").read_text(encoding="utf-8"))["rows"] if compare else []
    summary = {
        "seed": seed, "size": size, "size_settings": asdict(SIZES[size]), "precision": precision,
        "decision": audit_report["decision"], "low_quality_percentage": audit_report["low_quality_percentage"],
        "low_quality_ci95": audit_report.get("low_quality_ci95"),
        "loss_scorer_sees": visibility.get("sees", []), "loss_scorer_cannot_see": visibility.get("cannot_see", []),
        "audit_answer_key": key,
        "rounds": [{k: r[k] for k in ("dataset", "utterances", "wer_a", "wer_b", "cer_a", "cer_b", "verdict",
                                      "cer_verdict", "wer_a_ci95", "wer_b_ci95", "cer_a_ci95", "cer_b_ci95")}
                   for r in rows],
        "plan": _plan_summary(out / PLAN_FILE),
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(total, 1)},
        "report": str(out / "report" / "report.html") if compare else None,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    text = render_summary(summary)
    write_text_atomic(out / "summary.md", text + "\n")
    print("\n" + text)
    return summary


def _plan_summary(path: Path) -> dict | None:
    """What `caspi plan --measure` said of Round 1 before it ran (None when the plan is missing)."""
    if not path.is_file():
        return None
    plan = json.loads(path.read_text(encoding="utf-8"))
    layout = plan["layout"]
    return {"trainable": plan["model"]["phases"][0]["trainable"], "steps": layout["total_steps"],
            "memory_gib": layout["memory_gib"], "samples_per_s": plan["throughput"]["samples_per_s_per_gpu"],
            "predicted_minutes": None if layout["hours"] is None else layout["hours"] * 60}


def render_summary(summary: dict) -> str:
    """The closing summary as Markdown (summary.md, and what the demo prints last)."""
    key = summary["audit_answer_key"]
    o = key["overall"]
    ci = summary.get("low_quality_ci95") or [float("nan")] * 2
    lines = [f"# Caspi demo (seed {summary['seed']}, size {summary['size']})", "",
             f"Phase 0 on Round 2's data: **{summary['decision']}** at {summary['low_quality_percentage']:.1f} % "
             f"low quality (95 % CI {ci[0]:.1f}–{ci[1]:.1f} %). Round 1's loss scorer sees "
             f"{', '.join(summary['loss_scorer_sees']) or 'no domain'}"
             + (f"; cannot see {', '.join(summary['loss_scorer_cannot_see'])}" if summary["loss_scorer_cannot_see"]
                else "") + ".", "",
             f"Against the answer key: {o['caught']} of {o['planted']} planted errors removed, "
             f"{o['wrong_caught']} of {o['wrong_transcripts']} wrong transcripts; {o['removed_clean']} of "
             f"{o['removed']} removed clips were clean (precision "
             f"{(_rate(o['removed'] - o['removed_clean'], o['removed']) or 0):.3f}).", "",
             "| domain | planted | caught | wrong transcripts caught | removed clean clips |",
             "|---|---:|---:|---:|---:|"]
    for domain, c in key["by_domain"].items():
        lines.append(f"| {domain} | {c['planted']} | {c['caught']} | {c['wrong_caught']} / {c['wrong_transcripts']} "
                     f"| {c['removed_clean']} |")
    if summary["rounds"]:
        lines += ["", "| domain | clips | Round 1 WER | Round 2 WER | Round 1 CER | Round 2 CER | CER verdict | "
                  "WER verdict |", "|---|---:|---:|---:|---:|---:|---|---|"]
        for r in summary["rounds"]:
            lines.append(f"| {r['dataset']} | {r['utterances']} | {r['wer_a']:.3f} | {r['wer_b']:.3f} | "
                         f"{r['cer_a']:.3f} | {r['cer_b']:.3f} | {r['cer_verdict']} | {r['verdict']} |")
    else:
        lines += ["", "The gate said STOP: no Round 2 was trained (as a real run would stop here)."]
    plan = summary.get("plan")
    if plan and plan["predicted_minutes"] is not None:
        took = summary["seconds"].get("round 1")
        lines += ["", f"`caspi plan` of Round 1: {plan['trainable']:,} trainable parameters, {plan['steps']:,} steps, "
                  f"{plan['memory_gib']:.2f} GiB; at the {plan['samples_per_s']:.1f} clips/s it measured it "
                  f"predicted {plan['predicted_minutes']:.1f} min of training"
                  + (f"; Round 1 took {took / 60:.1f} min (its evals included)." if took else ".")]
    if "precision" in summary:  # summaries written before the demo chose a precision do not say
        lines += ["", "Both rounds trained with bf16 autocast (this CPU has native bf16)." if summary["precision"] ==
                  "bf16" else "Both rounds trained in float32 (this CPU has no native bf16)."]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items())]
    if summary["report"]:
        lines += ["", f"Report: {summary['report']}"]
    return "\n".join(lines)
