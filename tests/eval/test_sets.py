"""`caspi eval --sets` (caspi.eval.sets) on local parquet stand-ins of the field's eval sets: one table over the sets
whose WER is the leaderboard's corpus-level figure, the gated set listed as not available, cached imports reused,
and the numbers checked against hypotheses whose errors are known."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

from caspi.cli import main
from caspi.data.audio import SAMPLE_RATE
from caspi.data.importers.sets import EVAL_SETS, write_stand_in
from caspi.data.text import for_leaderboard, for_scoring
from caspi.errors import ConfigError, DataError
from caspi.eval import sets as sets_module
from caspi.eval.sets import evaluate_sets
from caspi.testing import save_tiny_model

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo-cpu.yaml"
SENTENCES = ["שלום עולם יפה", "חיילי צה״ל הגיעו הבוקר.", "מחר נלך לים", "אני אוהב לקרוא ספרים הרבה",
             "הגשם יורד בחוץ"]
# The sentences of each stand-in (cv17-he, gated, has none)
STAND_INS = {"eval-d1": [0, 1, 2], "eval-whatsapp": [1, 2, 3, 4], "saspeech": [0, 2, 4], "fleurs-he": [1, 2, 3, 4],
             "kan": [1, 2, 3]}
AVAILABLE = list(STAND_INS)


@pytest.fixture(scope="module")
def root(espeak, tmp_path_factory) -> Path:
    """Stand-ins of every set but cv17-he: 3-5 espeak-ng clips each, in the columns and split the registry names."""
    from caspi.data.synth import speak

    clips = []
    for text in SENTENCES:
        buf = io.BytesIO()
        sf.write(buf, speak(text), SAMPLE_RATE, format="WAV")
        clips.append((buf.getvalue(), text))
    root = tmp_path_factory.mktemp("mirror")
    for name, rows in STAND_INS.items():
        write_stand_in(root, name, [clips[i] for i in rows])
    return root


def corpus_wer(records: list[dict], norm) -> float:
    """The leaderboard's figure: one jiwer.process_words over all of a set's normalised references and hypotheses."""
    out = jiwer.process_words([norm(r["reference"]) for r in records], [norm(r["hypothesis"]) for r in records])
    return out.wer


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_of_a_model_on_all_sets_writes_one_table_of_corpus_level_wers(root, tmp_path, capsys, monkeypatch):
    model = save_tiny_model(tmp_path / "model", SENTENCES, seed=0, size="xs")
    out = tmp_path / "field"
    argv = ["eval", "--model", str(model), "--sets", "all", "--sets-root", str(root), "--out", str(out),
            "--resamples", "50", "--quiet", "--recipe", str(RECIPE), "eval.max_new_tokens=4", "eval.batch_size=8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| cv17-he | not available: cv17-he: no stand-in at" in printed and "mean of 5 sets" in printed

    table = json.loads((out / "sets.json").read_text())
    rows = {r["set"]: r for r in table["sets"]}
    assert list(rows) == list(EVAL_SETS)
    assert rows["cv17-he"]["status"] == "not available" and "gated" in rows["cv17-he"]["reason"]
    for name in AVAILABLE:
        row = rows[name]
        records = read_lines(out / name / "leaderboard" / "predictions.jsonl")
        assert row["status"] == "ok" and row["utterances"] == len(records) == len(STAND_INS[name])
        # corpus-level WER with the leaderboard normaliser, recomputed from the predictions with jiwer
        assert row["wer_leaderboard"] == pytest.approx(corpus_wer(records, for_leaderboard))
        assert row["wer_scoring"] == pytest.approx(corpus_wer(records, for_scoring))
        lo, hi = row["wer_leaderboard_ci95"]
        assert lo <= row["wer_leaderboard"] <= hi
        # decoded once: the scoring pass read the leaderboard pass's hypotheses
        scored = read_lines(out / name / "scoring" / "predictions.jsonl")
        assert [r["hypothesis"] for r in scored] == [r["hypothesis"] for r in records]
        assert "hypotheses_file" in json.loads((out / name / "scoring" / "summary.json").read_text())
        assert row["audio_minutes"] > 0
    mean = table["mean"]
    assert mean["sets"] == AVAILABLE
    assert mean["wer_leaderboard"] == pytest.approx(np.mean([rows[n]["wer_leaderboard"] for n in AVAILABLE]))
    with open(out / "sets.csv", newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["set"] for r in csv_rows] == [*EVAL_SETS, "mean"]
    assert float(csv_rows[0]["wer_leaderboard"]) == pytest.approx(rows["eval-d1"]["wer_leaderboard"])
    assert csv_rows[-1]["sets_in_mean"] == "5" and csv_rows[5]["status"] == "not available"
    md = (out / "sets.md").read_text(encoding="utf-8")
    assert md.count("\n| ") == 8  # header + 6 sets + mean
    assert "ivrit.ai licence v2" in md

    # A rerun reuses every imported manifest (import.json matches) and decodes again.
    def no_import(*args, **kwargs):
        raise AssertionError("imported again")

    monkeypatch.setattr(sets_module, "import_source", no_import)
    assert main(argv) == 0

    def figures(rows):  # what a rerun on the same data must reproduce (not its timing)
        return [{k: v for k, v in r.items() if k != "real_time_factor"} for r in rows]

    assert figures(json.loads((out / "sets.json").read_text())["sets"]) == figures(table["sets"])


def test_table_numbers_from_known_hypotheses(root, tmp_path):
    # One substituted word per utterance in kan; fleurs hypotheses are the references with the gershayim acronym
    # typed as two words: the leaderboard normaliser splits צה״ל in two in the reference too (no error), ours deletes
    # the gershayim (one word against two).
    hyps = {}
    kan = [SENTENCES[i] for i in STAND_INS["kan"]]
    rows = [{"id": f"kan-{i:06d}", "hypothesis": "טעות " + " ".join(t.split()[1:])} for i, t in enumerate(kan)]
    hyps["kan"] = tmp_path / "kan.jsonl"
    hyps["kan"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    fleurs = [SENTENCES[i] for i in STAND_INS["fleurs-he"]]
    rows = [{"id": f"fleurs-he-{i:06d}", "hypothesis": t.replace("צה״ל", "צה ל")} for i, t in enumerate(fleurs)]
    hyps["fleurs-he"] = tmp_path / "fleurs.jsonl"
    hyps["fleurs-he"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    result = evaluate_sets("fleurs-he,kan", tmp_path / "out", hypotheses=hyps, sets_root=root, resamples=50,
                           progress=False)

    by_set = {r["set"]: r for r in result.rows}
    kan_words = sum(len(for_leaderboard(t).split()) for t in kan)
    assert by_set["kan"]["wer_leaderboard"] == pytest.approx(3 / kan_words)  # corpus-level: 3 errors / all words
    assert by_set["kan"]["wer_leaderboard"] != pytest.approx(np.mean([1 / len(t.split()) for t in kan]))
    assert by_set["fleurs-he"]["wer_leaderboard"] == 0.0
    # ours: צה״ל → צהל, one reference word against the hypothesis' two: 1 substitution + 1 insertion
    fleurs_words = sum(len(for_scoring(t).split()) for t in fleurs)
    assert by_set["fleurs-he"]["wer_scoring"] == pytest.approx(2 / fleurs_words)
    assert result.mean["wer_leaderboard"] == pytest.approx((3 / kan_words + 0.0) / 2)
    for name in ("fleurs-he", "kan"):  # and each is one jiwer.process_words over the set's predictions
        records = read_lines(tmp_path / "out" / name / "leaderboard" / "predictions.jsonl")
        assert by_set[name]["wer_leaderboard"] == pytest.approx(corpus_wer(records, for_leaderboard))
        assert by_set[name]["wer_scoring"] == pytest.approx(corpus_wer(records, for_scoring))
    assert [r["set"] for r in result.rows] == ["fleurs-he", "kan"]  # registry order
    assert set(result.files) == {"md", "csv", "json"}


def test_an_unavailable_set_named_explicitly_is_an_error_before_any_decoding(root, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tmp_path / "never-loaded"), "--sets", "kan,cv17-he", "--sets-root", str(root),
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "cv17-he: no stand-in at" in err and "accept its terms" in err
    assert not (out / "kan" / "leaderboard").exists()  # nothing decoded
    assert main(["eval", "--model", "M", "--sets", "kan,kan2", "--out", str(out)]) == 2
    assert "unknown eval set 'kan2'; known sets: eval-d1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--model", "M", "--sets", "all", "--manifest", "E"], "not allowed with argument"),
    (["--model", "M"], "one of the arguments --manifest --sets is required"),
    (["--hypotheses", "H", "--sets", "all"], "--sets decodes each set with --model"),
    (["--model", "M", "--manifest", "E", "--sets-root", "R"], "--sets-root goes with --sets"),
])
def test_sets_flags_are_checked(tmp_path, capsys, argv, message):
    assert main(["eval", *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_set_names():
    assert sets_module.set_names("all") == (list(EVAL_SETS), True)
    assert sets_module.set_names("kan, eval-d1") == (["eval-d1", "kan"], False)
    with pytest.raises(ConfigError, match="named twice"):
        sets_module.set_names("kan,kan")
    with pytest.raises(ConfigError, match="give 'all' or set names"):
        sets_module.set_names("all,kan")


def test_hypotheses_are_needed_for_every_set_read_and_some_set_must_be_readable(root, tmp_path):
    with pytest.raises(DataError, match="no hypotheses file for kan"):
        evaluate_sets("kan", tmp_path / "a", hypotheses={}, sets_root=root, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"(?s)none of the eval sets can be read here:\n  eval-d1: no stand-in.*cv17"):
        evaluate_sets("all", tmp_path / "b", hypotheses={}, sets_root=tmp_path / "empty", progress=False)


def test_utterances_rejected_at_import_are_counted_and_noted(root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(root / "kan" / "validation-00000-of-00001.parquet")
    rows = [*table.to_pylist(), {**table.to_pylist()[0], "sentence": "  "}]  # a fourth row, with no transcript
    (tmp_path / "mirror" / "kan").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema),
                   tmp_path / "mirror" / "kan" / "validation-00000-of-00001.parquet")
    hyps = tmp_path / "kan.jsonl"
    hyps.write_text("".join(json.dumps({"id": f"kan-{i:06d}", "hypothesis": SENTENCES[n]}, ensure_ascii=False) + "\n"
                            for i, n in enumerate(STAND_INS["kan"])), encoding="utf-8")

    result = evaluate_sets("kan", tmp_path / "out", hypotheses={"kan": hyps}, sets_root=tmp_path / "mirror",
                           resamples=20, progress=False)

    row = result.rows[0]
    assert (row["utterances"], row["rejected_at_import"], row["wer_leaderboard"]) == (3, 1, 0.0)
    assert "kan: 1 utterances rejected at import" in result.files["md"].read_text(encoding="utf-8")
