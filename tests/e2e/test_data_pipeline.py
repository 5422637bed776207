"""The data half of the main job through the real CLI: synth → import → stats, and bad input through import."""

import gzip
import json

import pytest

from caspi.cli import main
from caspi.testing import planted_errors

pytestmark = pytest.mark.espeak


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Written by `caspi synth` itself, not the shared `synth_corpus`: the command is the first step under test."""
    out = tmp_path_factory.mktemp("corpus")
    assert main(["synth", "--out", str(out), "--n-train", "24", "--n-eval", "8", "--seed", "3",
                 "--error-rate", "0.25", "--quiet"]) == 0
    return out


def test_synth_import_stats(corpus, tmp_path, capsys):
    planted = list(planted_errors(corpus).values())
    assert len(planted) == 6 and {p["kind"] for p in planted} == {
        "wrong_transcript", "truncated_transcript", "appended_words", "silence_or_noise", "truncated_audio",
        "english_text"}
    out = tmp_path / "imported" / "train.jsonl.gz"
    assert main(["import", str(corpus / "train.jsonl.gz"), "--out", str(out), "--quiet"]) == 0
    assert "imported 24 samples" in capsys.readouterr().out
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["overall"]["count"] == 24
    assert {d: s["count"] for d, s in stats["domains"].items()} == {"studio": 6, "broadcast": 6, "whatsapp": 6,
                                                                    "d1": 6}
    assert 0 < stats["overall"]["duration"]["p50"] < 5  # seconds: 3–8-word sentences
    assert main(["stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "whatsapp" in table and "all" in table


def test_import_skips_and_records_bad_samples_or_fails_strict(corpus, tmp_path, capsys):
    # Corrupt one audio file and empty one transcript of the synthesised manifest.
    lines = gzip.open(corpus / "eval.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    cuts = [json.loads(line) for line in lines]
    broken_audio = tmp_path / "broken.flac"
    broken_audio.write_bytes(b"not audio at all")
    cuts[0]["recording"]["sources"][0]["source"] = str(broken_audio)
    cuts[1]["supervisions"][0]["text"] = "   "
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in cuts)

    out = tmp_path / "ok" / "eval.jsonl.gz"
    assert main(["import", str(bad), "--out", str(out), "--quiet"]) == 0
    rejected = [json.loads(line) for line in (out.parent / "rejected.jsonl").read_text().splitlines()]
    assert {(r["id"], r["reason"]) for r in rejected} == {(cuts[0]["id"], "unreadable"),
                                                           (cuts[1]["id"], "empty_transcript")}
    capsys.readouterr()
    assert main(["import", str(bad), "--out", str(tmp_path / "strict" / "m.jsonl.gz"), "--strict", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert cuts[0]["id"] in err and "Traceback" not in err


def test_import_rejects_clips_over_the_recipe_limit(corpus, tmp_path, capsys):
    out = tmp_path / "short" / "train.jsonl.gz"
    recipe = "recipes/demo-cpu.yaml"
    from pathlib import Path

    recipe = str(Path(__file__).resolve().parents[2] / recipe)
    assert main(["import", str(corpus / "train.jsonl.gz"), "--out", str(out), "--recipe", recipe,
                 "data.max_duration=2.0", "--quiet"]) == 0
    rejected = [json.loads(line) for line in (out.parent / "rejected.jsonl").read_text().splitlines()]
    assert rejected and all(r["reason"] == "too_long" for r in rejected)
