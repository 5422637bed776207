"""The CLI surface, exit codes and error printing (STYLE.md habit 10)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from caspi.cli import build_parser, main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_subcommand_surface_is_pinned():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"validate-recipe", "synth", "import", "stats", "audit", "train", "export", "eval",
                                "compare", "convert", "report", "demo", "plan", "doctor", "slurm"}


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


@pytest.mark.parametrize("command", [
    ["import", "SRC", "--out", "OUT/m.jsonl.gz"],
    ["audit", "--manifest", "M", "--out", "OUT"],
    ["eval", "--hypotheses", "H", "--manifest", "M", "--out", "OUT"],
    ["compare", "A", "B", "--out", "OUT"],
])
def test_overrides_need_a_recipe_in_every_command_that_takes_one(tmp_path, capsys, command):
    argv = [word.replace("OUT", str(tmp_path / "out")) for word in command]
    assert main([*argv, "data.max_duration=5"]) == 2
    assert capsys.readouterr().err == f"caspi: error: {command[0]}: overrides (data.max_duration=5) need --recipe\n"
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("flags, recipe, limits", [
    ([], False, (None, 0.0)),  # no recipe: only the flags limit
    (["--max-duration", "7"], False, (7.0, 0.0)),
    ([], True, (5.0, 0.0)),  # the recipe's data.max_duration (with its override), its min_duration
    (["--min-duration", "0.5"], True, (5.0, 0.5)),  # a flag given wins over the recipe
    (["--max-duration", "7"], True, (7.0, 0.0)),
])
def test_import_takes_each_duration_limit_from_its_flag_else_the_recipe(tmp_path, capsys, monkeypatch, flags, recipe,
                                                                         limits):
    from caspi.data import ingest

    seen = {}

    def fake_import(source, out, **options):
        seen.update(options)
        return SimpleNamespace(summary=lambda: "imported")

    monkeypatch.setattr(ingest, "import_source", fake_import)
    with_recipe = ["--recipe", str(RECIPES / "demo-cpu.yaml"), "data.max_duration=5"] if recipe else []
    assert main(["import", "SRC", "--out", str(tmp_path / "m.jsonl.gz"), *flags, *with_recipe]) == 0
    assert (seen["max_duration"], seen["min_duration"]) == limits
    assert capsys.readouterr().out == "imported\n"


@pytest.mark.parametrize("is_main, printed", [(True, True), (False, False)])
def test_train_reports_on_the_main_process_only(tmp_path, capsys, monkeypatch, is_main, printed):
    from caspi.train import loop

    result = SimpleNamespace(preempted=False, over_budget=False, is_main=is_main, best_wer=0.25, last_loss=1.5,
                             step=3, epoch=1, run_dir=tmp_path / "run",
                             checkpoint=tmp_path / "run" / "checkpoints" / "step-3")
    monkeypatch.setattr(loop, "train", lambda recipe, out, **options: result)
    assert main(["train", "--recipe", str(RECIPES / "demo-cpu.yaml"), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trained 3 steps (1 epochs), last loss 1.5000, best WER 0.250\n") if printed else out == ""


# ---------------------------------------------------------------------------------------------------- report


def _compare_folder(tmp_path) -> Path:
    """A `caspi compare` folder of two hypothesis files on a metadata-only manifest (no audio is read)."""
    import json

    from lhotse import CutSet

    from caspi.data.cuts import make_cut, write_manifest

    texts = ["שלום עולם יפה", "הילד הולך לבית הספר", "מחר נלך לים", "הגשם יורד בחוץ"] * 3
    cuts = [make_cut(f"utt-{i:02d}", tmp_path / f"clip{i}.flac", 32000, t, domain=("studio", "whatsapp")[i % 2])
            for i, t in enumerate(texts)]
    manifest = write_manifest(CutSet.from_cuts(cuts), tmp_path / "eval.jsonl.gz")
    for name, keep in (("r1", 1), ("r2", 3)):
        hyps = tmp_path / f"{name}.jsonl"
        hyps.write_text("".join(json.dumps({"id": c.id, "hypothesis": " ".join(t.split()[:keep])}) + "\n"
                                for c, t in zip(cuts, texts)), encoding="utf-8")
        assert main(["eval", "--hypotheses", str(hyps), "--manifest", str(manifest), "--out", str(tmp_path / name),
                     "--resamples", "20", "--quiet"]) == 0
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--out", str(tmp_path / "cmp"),
                 "--resamples", "20", "--quiet"]) == 0
    return tmp_path / "cmp"


def test_report_writes_the_page_and_every_command_is_recorded(tmp_path, capsys):
    from caspi.report.commands import read_commands

    cmp = _compare_folder(tmp_path)
    capsys.readouterr()
    assert main(["report", str(cmp), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "0 audit(s) (0 flagged samples, 0 clips), 1 comparison(s), 0 run(s)" in out
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert [c["argv"][1] for c in read_commands(cmp)] == ["compare"]
    assert [c["argv"][1:] for c in read_commands(tmp_path / "report")] == [["report", str(cmp), "--out",
                                                                           str(tmp_path / "report")]]
    assert all(c["exit_code"] == 0 and c["cwd"] for c in read_commands(tmp_path / "r1"))
    assert f"$ caspi compare {tmp_path / 'r1'} {tmp_path / 'r2'} --out {cmp}" in page
    assert f"$ caspi report {cmp} --out {tmp_path / 'report'}" in page  # this report's own command, listed last


def test_report_of_a_folder_that_is_none_of_the_kinds_exits_2(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert main(["report", str(tmp_path / "notes"), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "is not an audit folder (alignment_report.json" in err and "none of its sub-folders is one" in err
    assert not (tmp_path / "report").exists() and not (tmp_path / "notes" / "commands.jsonl").exists()


def test_only_rank_0_records_a_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    cmp = _compare_folder(tmp_path)
    assert not (cmp / "commands.jsonl").exists()
