"""The budget the training loop watches (`caspi.train.resources.Budget`): on a fake clock, the 80 % warning (once),
the stop at 100 %, `over_budget: continue`, the projection; the schema's keys; and through the real CLI on the
tiny model, a run the budget stops with exit 4 and a checkpoint, that stops again at once with the same budget and
resumes exactly once the budget is raised."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from caspi.config import Recipe, validate_recipe_dict
from caspi.errors import ConfigError
from caspi.train import loop
from caspi import testing
from caspi.cli import main
from caspi.train.resources import EXIT_OVER_BUDGET, Budget, CostMeter, _round_up



def train_cli(recipe, out, *extra) -> int:
    return main(["train", "--recipe", str(recipe), "--out", str(out), "--quiet", *extra])


class FakeClock(testing.FakeClock):
    def hours(self, h: float) -> None:
        self.now += h * 3600


def budget(clock, usd, mode="stop", price=2.0, world_size=1) -> Budget:
    return Budget(CostMeter(price, world_size, clock=clock), usd, mode)


def test_warns_once_at_80_percent_then_stops_at_100():
    clock = FakeClock()
    b = budget(clock, 10.0)  # $2 per hour: 5 hours
    clock.hours(3)  # $6, 60 %
    assert b.notices() == [] and not b.should_stop()
    clock.hours(1)  # $8, 80 %
    ((event, message),) = b.notices()
    assert event == "budget_warning"
    assert message.startswith("warning: cost so far $8.00 (4.000 GPU-hours × $2) is 80% of hardware.budget_usd $10")
    assert "saves and stops at 100 %" in message
    clock.hours(0.5)
    assert b.notices() == [] and not b.should_stop()  # once
    clock.hours(0.5)  # $10
    assert b.notices() == [] and b.should_stop()  # stop mode: the stop is the loop's, with `stop_message`
    text = b.stop_message(5, 10, Path("run/checkpoints/step-000005"))
    assert text.startswith("cost so far $10.00 (5.000 GPU-hours × $2) reached hardware.budget_usd $10 at step 5 "
                           "of 10; stopped with the checkpoint run/checkpoints/step-000005.")
    assert "hardware.budget_usd=22 appended" in text  # $2 per step × 10 steps + 10 %


def test_continue_mode_warns_once_at_100_and_never_stops():
    clock = FakeClock()
    b = budget(clock, 10.0, mode="continue")
    clock.hours(4)
    assert [e for e, _ in b.notices()] == ["budget_warning"]
    clock.hours(1)
    ((event, message),) = b.notices()
    assert event == "over_budget" and "continuing (hardware.over_budget = continue)" in message
    assert "$10.00 (5.000 GPU-hours × $2)" in message
    clock.hours(5)
    assert b.notices() == [] and not b.should_stop()


def test_a_jump_past_the_budget_stops_without_the_80_percent_warning():
    clock = FakeClock()
    b = budget(clock, 10.0)
    clock.hours(6)  # e.g. one long step
    assert b.notices() == [] and b.should_stop()


def test_a_resume_carries_the_spent_budget_over(tmp_path):
    clock = FakeClock()
    metrics = tmp_path / "metrics.jsonl"  # the last start stopped at $10 of $10 ($2 per hour)
    metrics.write_text('{"kind": "train", "step": 5, "gpu_hours": 4.9}\n'
                       '{"kind": "event", "step": 5, "event": "over_budget", "gpu_hours": 5.0}\n', encoding="utf-8")
    b = budget(clock, 10.0)
    b.meter.carry_over(metrics)
    assert b.should_stop()  # at once, before any step
    raised = budget(clock, 20.0)
    raised.meter.carry_over(metrics)
    assert not raised.should_stop() and [e for e, _ in raised.notices()] == []  # 50 %


def test_projection_at_the_rate_so_far():
    clock = FakeClock()
    b = budget(clock, 20.0, price=1.5, world_size=2)
    clock.hours(1)  # 2 GPU-hours, $3 after 10 of 100 steps
    assert b.projection(10, 100) == ("projected cost of the run: $30.00 for 100 steps ($3.00 (2.000 GPU-hours × "
                                     "$1.5) after 10); over hardware.budget_usd $20, which pays for about 66 steps "
                                     "(over_budget: stop)")
    assert budget(clock, 60.0, price=1.5, world_size=2).projection(0, 100) is None  # before a step
    roomy = budget(FakeClock(), 60.0, price=1.5, world_size=2)
    roomy.meter.clock.hours(1)
    assert roomy.projection(10, 100).endswith("; 50% of hardware.budget_usd $60")
    no_budget = budget(FakeClock(), None, price=1.5)
    no_budget.meter.clock.hours(1)
    assert no_budget.projection(10, 100) == ("projected cost of the run: $15.00 for 100 steps ($1.50 (1.000 "
                                             "GPU-hours × $1.5) after 10)")
    assert not no_budget.active and no_budget.notices() == [] and not no_budget.should_stop()
    assert Budget(CostMeter(None, 1, clock=FakeClock()), None).projection(10, 100) is None  # no price


def test_round_up_gives_two_significant_digits():
    assert [_round_up(x) for x in (1234.5, 22.0, 0.000123, 9.99)] == [1300, 22, 0.00013, 10]


def test_schema_budget_needs_a_price_and_may_change_on_resume():
    hw = {"accelerator": "cpu", "budget_usd": 50, "over_budget": "maybe"}
    with pytest.raises(ConfigError) as err:
        validate_recipe_dict({"name": "b", "hardware": hw}, "r.yaml")
    problems = err.value.problems
    assert any(p.startswith("hardware.over_budget: Input should be 'stop' or 'continue'") for p in problems)
    assert ("hardware.budget_usd: a budget ($50) needs hardware.price_per_gpu_hour (USD per GPU per hour) to count "
            "the cost against") in problems  # reported with the other problems
    with pytest.raises(ConfigError, match="hardware.budget_usd: Input should be greater than 0"):
        validate_recipe_dict({"name": "b", "hardware": {"price_per_gpu_hour": 1, "budget_usd": 0}})

    plain = Recipe(name="b", hardware={"price_per_gpu_hour": 1.6})
    raised = Recipe(name="b", hardware={"price_per_gpu_hour": 1.6, "budget_usd": 80, "over_budget": "continue"})
    assert raised.fingerprint() == plain.fingerprint()  # a resume may raise the budget
    assert Recipe(name="b", hardware={"price_per_gpu_hour": 2.0}).fingerprint() != plain.fingerprint()


def test_cli_stops_at_the_budget_with_exit_4_and_resumes_when_raised(make_recipe, read_run, golden_losses, tmp_path,
                                                                     monkeypatch, capsys):
    # A fake clock on which every optimizer step takes one hour; $1 per hour, a $2.5 budget: step 2 is 80 %, step 3
    # crosses it. Setup and eval take no time on it, so the figures are exact.
    clock = FakeClock()
    monkeypatch.setattr(loop, "CostMeter", functools.partial(CostMeter, clock=clock))
    original, steps = loop.TrainingRun._optimizer_step, []

    def hour_long(self, *args, **kwargs):
        clock.hours(1)
        steps.append(self.progress.step + 1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.TrainingRun, "_optimizer_step", hour_long)
    recipe = make_recipe(hardware={"accelerator": "cpu", "price_per_gpu_hour": 1.0, "budget_usd": 2.5})
    run = tmp_path / "run"

    assert train_cli(recipe, run, "train.max_steps=6") == EXIT_OVER_BUDGET == 4
    err = capsys.readouterr().err
    assert "caspi: warning: cost so far $2.00 (2.000 GPU-hours × $1) is 80% of hardware.budget_usd $2.5" in err
    events = [(e["step"], e["event"]) for e in read_run.events(run) if e["event"] != "checkpoint"]
    assert events == [(2, "budget_warning"), (3, "over_budget")]
    (stop,) = [e for e in read_run.events(run) if e["event"] == "over_budget"]
    checkpoint = run / "checkpoints" / "step-000003"
    assert stop["message"].startswith(
        "cost so far $3.00 (3.000 GPU-hours × $1) reached hardware.budget_usd $2.5 at step 3 of 6; stopped with the "
        f"checkpoint {checkpoint}. To go on, raise the budget and run the same command again with "
        "hardware.budget_usd=6.6 appended")  # $1 per step × 6 + 10 %
    assert f"caspi: {stop['message']}" in err and stop["gpu_hours"] == 3.0
    assert (checkpoint / "state.json").is_file() and steps == [1, 2, 3]

    # The same budget again: stops at once, before any step, with the same message.
    assert train_cli(recipe, run, "train.max_steps=6") == 4
    assert steps == [1, 2, 3] and f"caspi: {stop['message']}\n" in capsys.readouterr().err

    # Raised: not another recipe; the run goes on from step 3 exactly, and the first eval (step 4) projects the cost.
    assert train_cli(recipe, run, "train.max_steps=6", "hardware.budget_usd=100") == 0
    err = capsys.readouterr().err
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in read_run.losses(run)] == pytest.approx(golden_losses, rel=1e-4)
    assert ("caspi: projected cost of the run: $6.00 for 6 steps ($4.00 (4.000 GPU-hours × $1) after 4); 6% of "
            "hardware.budget_usd $100") in err
    costs = [(r["step"], r["gpu_hours"], r["cost_usd"]) for r in map(json.loads, (run / "metrics.jsonl").read_text(
        encoding="utf-8").splitlines()) if r["kind"] == "train"]
    assert costs == [(n, float(n), float(n)) for n in range(1, 7)]  # carried over the two earlier starts
