"""The training section of the report: a run folder's curves (train loss, eval WER/CER against step) with the phase
switches and resumes marked, what the run trained on, and its recipe.

What a run folder holds (`caspi.train`): run.json (written at the first start: the recipe, the pinned base, the
manifests' sha256, the gate; `resumes` lists every later start that restored a checkpoint, with its step),
recipe.yaml, and metrics.jsonl (`caspi.train.track`):

    {"kind": "train", "step": 12, "epoch": 1, "phase": "B", "loss": 2.31, ...}
    {"kind": "eval", "step": 200, "wer": 0.5, "cer": 0.2, "wer/studio": 0.41, "cer/studio": 0.18, ...}
    {"kind": "event", "step": 300, "event": "phase", "message": "switched to phase A at epoch 2, step 300"}

A resumed run's metrics.jsonl is cut back to its checkpoint and the steps after it are logged again, so the file
reads as one uninterrupted run: the resumes are known from run.json only. Non-finite values are the strings "nan",
"inf", "-inf" (`float()` reads them back).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from caspi.errors import DataError
from caspi.models.loading import RUN_FILE
from caspi.report.commands import read_commands
from caspi.report.inputs import read_json
from caspi.train.track import METRICS_FILE

EVENTS_SHOWN_BY_COUNT = {"checkpoint"}  # one per save: counted, not listed


@dataclass
class RunSection:
    folder: Path
    meta: dict  # run.json ({} when the run has none yet)
    recipe_yaml: str | None
    train: list[dict]
    evals: list[dict]
    events: list[dict]
    phases: list[tuple[int, str]]  # (step the phase starts at, its name)
    resumes: list[dict]  # run.json's `resumes`: {"step", "checkpoint", "at"}
    curves: str | None  # the plot's path relative to the report folder
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value) of the run's progress
    commands: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def listed_events(self) -> list[dict]:
        return [e for e in self.events if e.get("event") not in EVENTS_SHOWN_BY_COUNT]

    @property
    def checkpoints_saved(self) -> int:
        return sum(e.get("event") == "checkpoint" for e in self.events)


def read_run(folder: Path, out_dir: Path, index: int) -> RunSection:
    """The section for one run folder; its curves are drawn to OUT/curves-<index>.png."""
    meta = read_json(folder / RUN_FILE) if (folder / RUN_FILE).is_file() else {}
    records = read_metrics(folder / METRICS_FILE)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    events = [r for r in records if r.get("kind") == "event"]
    recipe_yaml = None
    if (folder / "recipe.yaml").is_file():
        recipe_yaml = (folder / "recipe.yaml").read_text(encoding="utf-8")
    elif isinstance(meta.get("recipe"), dict):
        recipe_yaml = yaml.safe_dump(meta["recipe"], sort_keys=False, allow_unicode=True)
    resumes = [r for r in meta.get("resumes", []) if isinstance(r, dict) and isinstance(r.get("step"), int)]
    section = RunSection(folder, meta, recipe_yaml, train, evals, events, phase_starts(train, events), resumes,
                         None, commands=read_commands(folder))
    if not meta:
        section.notes.append(f"{folder} has no {RUN_FILE}: the recipe and base model are unknown")
    if train or evals:
        name = f"curves-{index}.png"
        plot_curves(section, out_dir / name)
        section.curves = name
    else:
        section.notes.append(f"{folder / METRICS_FILE}: no training or eval records yet")
    section.facts = _facts(section)
    return section


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records in order; a last line torn by a kill is skipped, any other bad line is an error."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):
                break  # the half-written line of a killed process; the tracker starts a fresh line after it
            raise DataError(f"{path}:{n}: not a JSON record ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(f"{path}:{n}: a metrics record needs a 'kind' and an integer 'step'")
        out.append(record)
    return out


def number(value) -> float:
    """A metrics value as a float: numbers as they are, "nan"/"inf"/"-inf" read back, anything else NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def phase_starts(train: list[dict], events: list[dict]) -> list[tuple[int, str]]:
    """(step, phase) where each phase began: the first train record's phase, then each "phase" event's step with
    the phase of the first train record after it (train records name their phase; the event marks the step)."""
    starts: list[tuple[int, str]] = []
    if train and train[0].get("phase"):
        starts.append((0, str(train[0]["phase"])))
    for e in (e for e in events if e.get("event") == "phase"):
        after = next((r for r in train if r["step"] > e["step"]), None)
        name = str(after.get("phase")) if after and after.get("phase") else str(e.get("message", "?"))
        if not starts or starts[-1][1] != name:
            starts.append((e["step"], name))
    return starts


def _facts(s: RunSection) -> list[tuple[str, str]]:
    facts = []
    if s.train:
        last = s.train[-1]
        # Train records are logged every train.log_every_steps; the last step trained is the furthest any record
        # reached (the final eval, checkpoint and "finished" event name it).
        reached = max(r["step"] for r in (*s.train, *s.evals, *s.events) if isinstance(r.get("step"), int))
        facts.append(("steps trained", f"{reached:,} (epoch {last.get('epoch', '?')}, phase "
                                       f"{last.get('phase', '?')})"))
        facts.append(("last train loss", _num(number(last.get("loss")))))
    if s.evals:
        best = min(s.evals, key=lambda r: (math.isnan(number(r.get("wer"))), number(r.get("wer"))))
        last = s.evals[-1]
        facts.append(("best eval", f"WER {_num(number(best.get('wer')))} / CER {_num(number(best.get('cer')))} at "
                                   f"step {best['step']:,}"))
        facts.append(("last eval", f"WER {_num(number(last.get('wer')))} / CER {_num(number(last.get('cer')))} at "
                                   f"step {last['step']:,}"))
    if s.phases:
        facts.append(("phases", ", ".join(f"{name} from step {step:,}" for step, name in s.phases)))
    facts.append(("resumed", ", ".join(f"at step {r['step']:,} ({r.get('checkpoint', '?')})" for r in s.resumes)
                  if s.resumes else "never"))
    if s.checkpoints_saved:
        facts.append(("checkpoints saved", f"{s.checkpoints_saved:,}"))
    return facts


def _num(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.3f}" if abs(x) < 100 else f"{x:,.1f}"


# ---------------------------------------------------------------------------------------------------- the plot


def plot_curves(s: RunSection, path: Path) -> Path:
    """Train loss (top) and eval WER/CER overall and CER per domain (bottom) against step; dashed grey lines where
    a phase starts, dotted red ones where the run was resumed."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9.0, 5.6))
    steps = [r["step"] for r in s.train]
    losses = [number(r.get("loss")) for r in s.train]
    if steps:
        top.plot(steps, losses, color="#2f6db5", lw=0.8, alpha=0.45 if len(steps) > 30 else 1.0, label="loss")
        if len(steps) > 30:
            top.plot(steps, _ema(losses, 0.9), color="#2f6db5", lw=1.8, label="loss (moving average)")
    else:
        top.text(0.5, 0.5, "no train records", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("train loss")
    if s.evals:
        e_steps = [r["step"] for r in s.evals]
        bottom.plot(e_steps, [number(r.get("cer")) for r in s.evals], "o-", color="#c0392b", lw=1.8, ms=3.5,
                    label="CER (all)")
        bottom.plot(e_steps, [number(r.get("wer")) for r in s.evals], "s--", color="#7f8c8d", lw=1.4, ms=3,
                    label="WER (all)")
        domains = sorted({k.split("/", 1)[1] for r in s.evals for k in r if k.startswith("cer/")})
        for domain in domains:
            bottom.plot(e_steps, [number(r.get(f"cer/{domain}")) for r in s.evals], lw=0.9, alpha=0.8,
                        label=f"CER {domain}")
        bottom.legend(fontsize=7, ncol=min(3, 2 + len(domains)), loc="upper right")
    else:
        bottom.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("eval error rate")
    bottom.set_xlabel("optimizer step")
    for step, name in s.phases:
        for ax in (top, bottom):
            ax.axvline(step, color="#555555", ls="--", lw=1.0)
        top.annotate(f"phase {name}", xy=(step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -11),
                     textcoords="offset points", fontsize=8, color="#333333")
    for r in s.resumes:
        for ax in (top, bottom):
            ax.axvline(r["step"], color="#d62728", ls=":", lw=1.6)
        top.annotate(f"resumed at step {r['step']}", xy=(r["step"], 0.0), xycoords=("data", "axes fraction"),
                     xytext=(3, 4), textcoords="offset points", fontsize=8, color="#d62728")
    if steps:
        top.legend(fontsize=7, loc="upper right")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.set_title(f"{s.folder.name}: training curves", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ema(values: list[float], decay: float) -> list[float]:
    """Exponential moving average that skips non-finite values (a skipped step's loss)."""
    out, avg = [], None
    for v in values:
        if math.isfinite(v):
            avg = v if avg is None else decay * avg + (1 - decay) * v
        out.append(avg if avg is not None else math.nan)
    return out
