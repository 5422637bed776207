"""The CLI surface, exit codes and error printing (STYLE.md habit 10)."""

import subprocess
import sys
from pathlib import Path

import pytest

from caspi.cli import build_parser, main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_subcommand_surface_is_pinned():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"validate-recipe", "synth", "import", "stats", "audit", "train", "export", "eval",
                                "compare"}


def test_validate_recipe_ok(capsys):
    assert main(["validate-recipe", str(RECIPES / "round2-2xa100.yaml"), str(RECIPES / "round2-8xa100.yaml")]) == 0
    out = capsys.readouterr().out
    assert "micro 2 × world 8 × accumulation 4 = effective 64" in out
    assert "micro 2 × world 2 × accumulation 16 = effective 64" in out


def test_config_error_exits_2_with_one_message(capsys):
    code = main(["validate-recipe", str(RECIPES / "round2-2xa100.yaml"), "train.micro_batch=0", "train.typo=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.micro_batch" in err and "train.typo: unknown key" in err
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    assert main(["import"]) == 2  # missing SOURCE and --out
    assert "the following arguments are required" in capsys.readouterr().err


def test_data_error_exits_1_and_debug_shows_traceback(tmp_path, capsys):
    missing = tmp_path / "none.jsonl.gz"
    assert main(["stats", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "manifest not found" in err and str(missing) in err and "Traceback" not in err
    assert main(["--debug", "stats", str(missing)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).with_name("caspi")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "caspi.cli"]
    proc = subprocess.run(cmd + ["validate-recipe", str(RECIPES / "demo-cpu.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "demo-cpu.yaml: OK" in proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["validate-recipe", "--help"]])
def test_help_exits_0(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


def test_overrides_need_a_command_with_a_recipe(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "m.jsonl.gz"), "train.seed=1"]) == 2
    assert "takes no recipe" in capsys.readouterr().err


def test_import_overrides_need_a_recipe(tmp_path, capsys):
    assert main(["import", str(tmp_path), "--out", str(tmp_path / "m.jsonl.gz"), "data.max_duration=5"]) == 2
    assert "need --recipe" in capsys.readouterr().err
