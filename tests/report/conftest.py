"""A tiny project for the report tests: a Phase 0 audit of the shared synthetic corpus (one transcript replaced by
HTML, to prove transcripts are escaped), a Round 1 vs Round 2 comparison of two eval folders made from hypotheses,
and a run folder in the training loop's formats (run.json, recipe.yaml, metrics.jsonl through the real `Tracker`)
with a phase switch and a resume. The audit, evals and compare are made by the real CLI, so each folder also holds
the commands.jsonl the CLI records."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
from lhotse import CutSet
from lhotse.utils import fastcopy

from caspi.cli import main
from caspi.config import load_recipe
from caspi.data.cuts import cut_text, read_manifest, write_manifest
from caspi.report.commands import COMMANDS_FILE
from caspi.report.screenshot import CHROMIUM, missing_browser
from caspi.train.track import Tracker

REPO = Path(__file__).resolve().parents[2]
INJECTED = '<script>alert("x")</script> <b>hello</b> & "world"'  # a transcript that must reach the page as text


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, for Playwright's `executable_path`. Skips without it or without Playwright; under CI
    (CI=true) fails instead: the browser tests must run there (.ci/run installs it with scripts/ensure-chromium)."""
    problems = missing_browser()
    if problems:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail("; ".join(problems) + "; required under CI=true", pytrace=False)
        pytest.skip("; ".join(problems))
    return CHROMIUM


@pytest.fixture(scope="session")
def project(tmp_path_factory, synth_corpus) -> Path:
    """tmp/{data, phase0, eval-r1, eval-r2, r1-vs-r2, round2}: the folders a Round-2 project holds."""
    root = tmp_path_factory.mktemp("report-project")
    data = root / "data"
    data.mkdir()
    cuts = list(read_manifest(synth_corpus.train_manifest))
    victim = next(i for i, c in enumerate(cuts) if c.id.startswith("train-whatsapp"))
    cuts[victim] = fastcopy(cuts[victim], supervisions=[fastcopy(cuts[victim].supervisions[0], text=INJECTED)])
    train = write_manifest(CutSet.from_cuts(cuts), data / "train.jsonl.gz")
    # The injected Latin transcript is a fifth hard failure (16.6 %): above the default STOP line of 15 %.
    assert main(["audit", "--manifest", str(train), "--out", str(root / "phase0"), "--recipe",
                 str(REPO / "recipes" / "demo-cpu.yaml"), "audit.stop_above=20", "--quiet"]) == 0

    eval_cuts = sorted(read_manifest(synth_corpus.eval_manifest), key=lambda c: c.id)
    for name, keep in (("eval-r1", 0.5), ("eval-r2", 0.75)):
        hyps = data / f"{name}.jsonl"
        with hyps.open("w", encoding="utf-8") as f:
            for c in eval_cuts:
                words = cut_text(c).split()
                f.write(json.dumps({"id": c.id, "hypothesis": " ".join(words[:max(1, math.ceil(keep * len(words)))])},
                                   ensure_ascii=False) + "\n")
        assert main(["eval", "--hypotheses", str(hyps), "--manifest", str(synth_corpus.eval_manifest),
                     "--out", str(root / name), "--resamples", "50", "--quiet"]) == 0
    assert main(["compare", str(root / "eval-r1"), str(root / "eval-r2"), "--names", "round 1", "round 2",
                 "--out", str(root / "r1-vs-r2"), "--resamples", "50", "--quiet"]) == 0
    write_run(root / "round2", synth_corpus)
    return root


def write_run(run: Path, corpus) -> Path:
    """A run folder as `caspi train` leaves one of the Round 2 recipe that was preempted at step 30 and resumed:
    Strategy B for steps 1-39, Strategy A from step 40, eval every 10 steps on four domains, a checkpoint every
    10 steps."""
    recipe = load_recipe(REPO / "recipes" / "round2-2xa100.yaml")
    run.mkdir(parents=True)
    meta = {"fingerprint": recipe.fingerprint(), "recipe_name": recipe.name, "overrides": ["train.epochs=2"],
            "recipe": recipe.to_dict(), "world_size": 1, "gate": {"decision": "CAUTION"},
            "base": {"kind": "in_run", "path": "base", "sha256": "0" * 64, "tiny": "xs"},
            "manifests": {"train": {"path": str(corpus.train_manifest), "sha256": "1" * 64}},
            "created_at": "2026-11-26T01:00:00+0000", "caspi": "0.1.0",
            "resumes": [{"step": 30, "checkpoint": "step-000030", "at": "2026-11-26T01:05:00+0000"}]}
    (run / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (run / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    with Tracker(run, tensorboard=False) as tracker:
        for step in range(1, 61):
            phase = "Strategy B" if step < 40 else "Strategy A"
            if step == 40:
                tracker.log({"kind": "event", "step": 39, "event": "phase",
                             "message": "switched to phase Strategy A at epoch 2, step 39"})
            loss = 3.0 * math.exp(-step / 25) + 0.4 + 0.05 * math.sin(step)
            tracker.log({"kind": "train", "step": step, "epoch": 1 if step < 40 else 2, "phase": phase,
                         "loss": loss if step != 17 else float("nan"), "lr/projector": 1e-3})
            if step % 10 == 0:
                record = {"kind": "eval", "step": step, "wer": 1.0 - step / 80, "cer": 0.9 - step / 90}
                for k, domain in enumerate(("broadcast", "d1", "studio", "whatsapp")):
                    record[f"wer/{domain}"] = 1.0 - step / (80 + 10 * k)
                    record[f"cer/{domain}"] = 0.9 - step / (90 + 10 * k)
                tracker.log(record)
                tracker.log({"kind": "event", "step": step, "event": "checkpoint",
                             "message": f"every 10 steps: saved step-{step:06d} in 0.10 s"})
        tracker.log({"kind": "event", "step": 60, "event": "finished", "message": "finished at step 60, epoch 2"})
    # As the CLI records them (`caspi.report.commands`), after the audit and compare: preempted (143), then resumed.
    argv = ["caspi", "train", "--recipe", "recipes/round2-2xa100.yaml", "--out", str(run), "train.epochs=2"]
    with (run / COMMANDS_FILE).open("w", encoding="utf-8") as f:
        for offset, code, seconds in ((0, 143, 58.2), (61, 0, 41.9)):
            at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() + offset))
            f.write(json.dumps({"argv": argv, "cwd": str(REPO), "exit_code": code, "started_at": at,
                                "seconds": seconds, "caspi": "0.1.0"}) + "\n")
    return run


@pytest.fixture(scope="session")
def injected() -> str:
    return INJECTED


@pytest.fixture
def report_out(tmp_path) -> Path:
    return tmp_path / "report"


@pytest.fixture
def copy_of(tmp_path):
    """`copy_of(folder)`: a writable copy of a fixture folder (the session's folders are shared)."""
    return lambda folder: Path(shutil.copytree(folder, tmp_path / folder.name))
