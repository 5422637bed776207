"""What training checks and reports about its inputs and hardware (issue 14, items 11 and 13): empty transcripts are
refused before any model work; the recipe's language and `eval.num_beams` reach the model; a world size other than
the recipe's is a warning event; GPU hours and cost are logged on CUDA when a price is set."""

from __future__ import annotations

import json

import pytest
import torch
from lhotse import CutSet, MonoCut

from caspi.audit.scorers import AsrScorer
from caspi.config import AsrScorerConfig, EvalConfig, load_recipe
from caspi.data.cuts import read_manifest, write_manifest
from caspi.errors import DataError
from caspi.eval.evaluate import evaluate
from caspi.models import get_family
from caspi.models.loading import trained_language
from caspi.train import loop
from caspi.train.loop import train
from caspi.testing import FakeClock
from caspi.train.resources import CostMeter, hardware_warnings


def test_empty_transcripts_are_refused_before_any_model_work(train_corpus, make_recipe, tmp_path, monkeypatch):
    cuts = sorted(read_manifest(train_corpus / "train.jsonl.gz"), key=lambda c: c.id)
    emptied = {cuts[3].id: "", cuts[10].id: "   ", cuts[20].id: "\u05b8\u05b4"}  # the last: niqqud only
    edited = []
    for cut in cuts:
        record = cut.to_dict()
        if cut.id in emptied:
            record["supervisions"][0]["text"] = emptied[cut.id]
        edited.append(MonoCut.from_dict(record))
    manifest = write_manifest(CutSet.from_cuts(edited), tmp_path / "train.jsonl.gz")
    recipe = load_recipe(make_recipe("empty", data={"train_manifest": str(manifest), "num_workers": 0}))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the transcripts were checked")

    monkeypatch.setattr(loop, "build_model", no_model)
    with pytest.raises(DataError) as info:
        train(recipe, tmp_path / "run", progress=False)
    message = str(info.value)
    assert f"{manifest}: 3 of {len(cuts)} training cuts have an empty transcript" in message
    assert all(cut_id in message for cut_id in emptied)


def test_language_and_num_beams_reach_the_model_and_world_size_is_checked(make_recipe, read_run, tmp_path,
                                                                          monkeypatch):
    family_type = type(get_family("qwen3_asr"))
    calls: dict[str, list[dict]] = {"build_inputs": [], "decode": []}
    for name in calls:
        original = getattr(family_type, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls[_name].append(kwargs)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(family_type, name, spy)
    recipe = make_recipe(
        "checks",
        model={"language": "English"},
        hardware={"accelerator": "cpu", "gpus_per_node": 2, "price_per_gpu_hour": 2.0},  # the run has 1 process
        train={"max_steps": 1},
        eval={"every_steps": 1, "num_beams": 2, "max_new_tokens": 3},
    )
    run = tmp_path / "run"
    train(load_recipe(recipe), run, progress=False)

    assert calls["decode"] and all(c["num_beams"] == 2 and c["language"] == "English" for c in calls["decode"])
    training = [c for c in calls["build_inputs"] if c.get("dtype") is not None and "language" in c]
    assert training and all(c["language"] == "English" for c in training)
    tokenizer = get_family("qwen3_asr").load(str(run / "base"), dtype=torch.float32)[1].tokenizer
    assert tokenizer.unk_token_id not in tokenizer("language English")["input_ids"]  # the tiny vocab has the tag

    (warning,) = [e for e in read_run.events(run) if e["event"] == "world_size_mismatch"]
    assert "hardware.gpus_per_node × hardware.nodes = 2 × 1 = 2 process(es), but this run has 1" in warning["message"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    # a price in the recipe is paid on any device: the CPU run (one process, not the planned 2) is costed too
    assert all(r["cost_usd"] == pytest.approx(2.0 * r["gpu_hours"], abs=1e-4) for r in records if r["kind"] != "event")

    # eval and the audit's asr scorer decode the run in the language it was trained with, not the Hebrew default
    calls["decode"].clear()
    summary = evaluate(load_recipe(recipe).data.eval_manifest, tmp_path / "eval", EvalConfig(max_new_tokens=3),
                       model=str(run), resamples=10, progress=False).summary
    assert summary["decoding"]["language"] == "English"
    assert calls["decode"] and all(c["language"] == "English" for c in calls["decode"])
    assert trained_language(run) == "English" and trained_language(tmp_path / "eval") is None
    assert AsrScorer(AsrScorerConfig(enabled=True, model=str(run))).language == "English"


def test_cost_meter_counts_gpu_hours_and_carries_over_a_resume(tmp_path):
    clock = FakeClock()
    meter = CostMeter(1.6, world_size=2, clock=clock)
    assert meter.fields() == {"gpu_hours": 0.0, "cost_usd": 0.0}
    clock.now += 1800  # half an hour on two GPUs
    assert meter.fields() == {"gpu_hours": 1.0, "cost_usd": 1.6}

    metrics = tmp_path / "metrics.jsonl"  # an earlier start of the run logged 0.5 GPU hours before it was killed
    metrics.write_text('{"kind": "train", "step": 1, "gpu_hours": 0.25}\n{"kind": "eval", "step": 2, '
                       '"gpu_hours": 0.5}\nnot json\n', encoding="utf-8")
    resumed = CostMeter(1.6, world_size=2, clock=clock)
    resumed.carry_over(metrics)
    clock.now += 900
    assert resumed.fields() == {"gpu_hours": 1.0, "cost_usd": 1.6}

    assert CostMeter(None, 2, clock=clock).fields() == {}  # no price: nothing logged


def test_hardware_warnings_name_the_recipe_keys(make_recipe):
    recipe = load_recipe(make_recipe("hw", hardware={"accelerator": "cpu", "gpus_per_node": 2, "nodes": 2,
                                                     "gpu_memory_gib": 40}, train={"effective_batch": 16}))
    assert hardware_warnings(recipe, world_size=4, memory_gib=39.4) == []  # an A100-40GB reports 39.4 GiB
    assert hardware_warnings(recipe, world_size=4, memory_gib=None) == []  # CPU: no device memory to compare
    (short,) = hardware_warnings(recipe, world_size=4, memory_gib=22.0)
    assert short[0] == "gpu_memory_short" and "22.0 GiB, less than the recipe's hardware.gpu_memory_gib (40" in short[1]
    (mismatch,) = hardware_warnings(recipe, world_size=2, memory_gib=None)
    assert mismatch[0] == "world_size_mismatch"
    assert "2 × 2 = 4 process(es), but this run has 2" in mismatch[1]
    assert "gradient accumulation follows the real number (2)" in mismatch[1]  # 16 = micro 4 × 2 processes × 2


def test_hardware_warnings_of_a_matching_run_are_none(make_recipe):
    recipe = load_recipe(make_recipe("hw1"))
    assert hardware_warnings(recipe, world_size=1, memory_gib=None) == []
