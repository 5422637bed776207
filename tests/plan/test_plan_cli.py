"""`caspi plan` through the command line: the real 1.7B counts, the 1/2/8-GPU table, JSON, the tiny recipe's steps,
`--measure`, bad input, and every shipped recipe."""

import json
from pathlib import Path

import pytest
from lhotse import CutSet

from caspi.cli import main
from caspi.data.cuts import write_manifest
from caspi.testing import metadata_cut

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ROUND2 = str(RECIPES / "round2-2xa100.yaml")
DEMO = str(RECIPES / "demo-cpu.yaml")


def _plan_json(capsys, *args) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def metadata_manifest(tmp_path):
    """48 clips of 2 s whose audio is never read: steps need durations only."""
    cuts = CutSet.from_cuts(metadata_cut(f"c{i:02d}", 2.0) for i in range(48))
    return str(write_manifest(cuts, tmp_path / "train.jsonl.gz"))


def test_round2_prints_the_real_1p7b_counts_and_the_gpu_table(capsys):
    assert main(["plan", "--recipe", ROUND2, "--samples", "186812", "--throughput", "10"]) == 0
    out = capsys.readouterr().out
    # REFERENCE.md's sizes of Qwen3-ASR-1.7B, from the model built on the meta device.
    assert "parameters  2,038,052,480 (+ 17,432,576 LoRA adapter parameters)" in out
    for group, count in (("projector", "3,148,800"), ("audio_top", "100,769,792"), ("lm_head", "311,164,928")):
        assert any(group in line and line.endswith(count) for line in out.splitlines()), group
    assert "LM head is tied to the input embeddings" in out
    # Seed 002: ceil(186,812 / 64) = 2,919 steps an epoch, 14,595 in 5 epochs, on any GPU count.
    assert "2,919 per epoch (estimated) × 5 epochs → 14,595 optimizer steps" in out
    assert "Strategy A: 8,757 steps, from step 5,839" in out
    # 934,060 samples at 10/s per GPU: 1 GPU 25.9 h; 2 GPUs at 90 %: 14.4 h, 28.8 GPU-hours, $46.13 at $1.60.
    assert "14.4 h wall clock × 2 GPUs × 90% DDP efficiency (assumed); 28.8 GPU-hours" in out
    assert "$46.13 at $1.60 per GPU-hour" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[out.splitlines().index(
        next(line for line in out.splitlines() if line.startswith("Same effective batch (64)"))) + 2:][:3]}
    assert rows["1"][1:4] == ["2", "×", "32"] and rows["1"][-4:] == ["14,595", "25.9", "25.9", "$41.51"]
    assert rows["2"][2:5] == ["2", "×", "16"] and rows["2"][-4:] == ["14,595", "14.4", "28.8", "$46.13"]
    assert rows["8"][1:4] == ["2", "×", "4"] and rows["8"][-4:] == ["14,595", "3.6", "28.8", "$46.13"]


def test_json_has_stable_keys_and_the_same_numbers(capsys):
    plan = _plan_json(capsys, "--recipe", ROUND2, "--samples", "186812", "--gpus", "8", "--price", "2")
    assert plan["model"]["total"] == 2_038_052_480
    strategy_a = plan["model"]["phases"][1]
    assert strategy_a["name"] == "Strategy A" and strategy_a["groups"]["audio_top"] == 100_769_792
    assert plan["hardware"]["world_size"] == 8 and plan["hardware"]["price_per_gpu_hour"] == 2
    layout = plan["layout"]
    assert (layout["world_size"], layout["accumulation"], layout["steps_per_epoch"], layout["total_steps"]) == (
        8, 4, 2_919, 14_595)
    assert [p["steps"] for p in layout["phases"]] == [5_838, 8_757]
    assert layout["hours"] is None and layout["cost_usd"] is None  # no throughput: unknown, never guessed
    assert [row["world_size"] for row in plan["table"]] == [1, 2, 8]
    mem = layout["phases"][1]["memory"]
    assert mem["total_bytes"] == sum(mem["terms"].values()) and mem["fits"] is True
    assert plan["throughput"] == {"samples_per_s_per_gpu": None, "source": None, "detail": "",
                                  "ddp_efficiency": 0.9, "ddp_efficiency_is_assumed": True}


def test_a_layout_that_does_not_fit_names_the_micro_batch_that_does(capsys):
    args = ["--recipe", ROUND2, "train.micro_batch=8", "--gpu-mem", "16", "--samples", "1000"]
    plan = _plan_json(capsys, *args)
    memory = plan["layout"]["phases"][1]["memory"]  # Strategy A on 2 GPUs
    assert plan["layout"]["fits"] is False and memory["fits"] is False and memory["total_gib"] > 16 * 0.9
    largest = memory["largest_micro_batch"]
    assert 1 <= largest < 8 and 64 % (largest * 2) == 0  # the effective batch is kept by accumulation
    assert main(["plan", *args]) == 0
    out = capsys.readouterr().out
    assert f"fits 16 GiB (Strategy A): NO: micro-batch {largest} fits (accumulation {64 // (largest * 2)})" in out
    assert "8 × 4  " in out and f"NO (micro {largest} fits)" in out


def test_without_data_or_throughput_steps_and_hours_are_unknown(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's phase0/cleaned.jsonl.gz is not here
    assert main(["plan", "--recipe", ROUND2]) == 0
    out = capsys.readouterr().out
    assert "steps       unknown" in out
    assert "time        unknown (pass --throughput or --measure)" in out
    assert "steps unknown: give --samples N or --manifest PATH (phase0/cleaned.jsonl.gz is not here)" in out


def test_tiny_recipe_steps_from_a_small_manifest(capsys, metadata_manifest):
    # One duration bucket: 48 clips make full micro-batches. micro 4 × accumulation 4 = 16 on one process:
    # 12 micro-batches = 3 steps an epoch, 60 in 20 epochs.
    overrides = ["train.num_buckets=1", "train.micro_batch=4"]
    plan = _plan_json(capsys, "--recipe", DEMO, "--manifest", metadata_manifest, *overrides)
    assert plan["data"]["clips"] == 48 and plan["data"]["audio_hours"] == pytest.approx(96 / 3600)
    table = {row["world_size"]: row for row in plan["table"]}
    one, two, eight = table[1], table[2], table[8]
    assert (one["accumulation"], one["batches_per_rank"], one["steps_per_epoch"], one["total_steps"]) == (4, 12, 3, 60)
    assert one["batch_count"] == "exact"  # the trainer's own sampler counted it
    assert (two["accumulation"], two["batches_per_rank"], two["steps_per_epoch"]) == (2, 6, 3)
    # 16 is not a multiple of 4 × 8: the trainer refuses it; micro-batch 2 would keep the effective batch.
    assert not eight["divisible"] and eight["total_steps"] is None and eight["suggested_micro_batch"] == 2


def test_tiny_recipe_not_divisible_layout_is_marked(capsys, metadata_manifest):
    assert main(["plan", "--recipe", DEMO, "--manifest", metadata_manifest, "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "NOT RUNNABLE: effective 16 is not a multiple of micro 16 × 2 GPU(s); micro-batch 8 would be" in out
    assert "16 × ✗ (try 8)" in out


@pytest.mark.parametrize("args, message, code", [
    (["--manifest", "nowhere.jsonl.gz"], "nowhere.jsonl.gz: training manifest not found", 1),
    (["--samples", "0"], "samples: expected an integer > 0, got 0", 2),
    (["--samples", "10", "--throughput", "-3"], "throughput: expected a number > 0", 2),
    (["--samples", "10", "--gpus", "0"], "gpus: expected an integer > 0", 2),
    (["--samples", "10", "--price", "-1"], "price: expected a number >= 0", 2),
    (["--samples", "10", "--manifest", "x"], "not allowed with argument", 2),
    (["--samples", "10", "--measure"], "--measure trains on the longest clips of the training manifest", 2),
    (["--samples", "ten"], "invalid int value", 2),
])
def test_bad_input_is_one_message(capsys, args, message, code):
    assert main(["plan", "--recipe", DEMO, *args]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_recipe(capsys):
    assert main(["plan", "--recipe", "no-such-recipe.yaml"]) == 2
    assert "no-such-recipe.yaml" in capsys.readouterr().err


def test_measure_without_cuda_is_a_clear_error(capsys, metadata_manifest):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error is for machines without a GPU")
    assert main(["plan", "--recipe", ROUND2, "--manifest", metadata_manifest, "--measure"]) == 1
    assert "the recipe trains on CUDA (hardware.accelerator), which this machine does not have" in (
        capsys.readouterr().err)


def test_measure_times_real_training_steps_of_a_tiny_recipe(capsys, synth_corpus):
    plan = _plan_json(capsys, "--recipe", DEMO, "--manifest", str(synth_corpus.train_manifest), "--measure",
                      "train.micro_batch=4", "train.effective_batch=4", "--price", "1")
    tp = plan["throughput"]
    assert tp["source"] == "measured" and tp["samples_per_s_per_gpu"] > 0
    assert "8 timed steps of the trainer, phase scratch, micro-batch 4 of the longest clips" in tp["detail"]
    one = plan["table"][0]
    clips, steps = plan["data"]["clips"], one["total_steps"]
    assert one["hours"] == pytest.approx(clips * 20 / tp["samples_per_s_per_gpu"] / 3600)  # 20 epochs
    assert one["cost_usd"] == pytest.approx(one["hours"]) and steps == 20 * one["steps_per_epoch"]


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_plans(capsys, path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no manifest of theirs here: --samples gives the epoch
    plan = _plan_json(capsys, "--recipe", str(path), "--samples", "1000", "--throughput", "5")
    assert plan["model"]["total"] > 0 and plan["model"]["phases"]
    assert {1, 2, 8} <= {row["world_size"] for row in plan["table"]}
    layout = plan["layout"]
    assert layout["total_steps"] > 0 and layout["hours"] > 0
    assert all(p["memory"]["total_bytes"] > 0 for p in layout["phases"])
    assert main(["plan", "--recipe", str(path), "--samples", "1000"]) == 0
    assert "Same effective batch" in capsys.readouterr().out
