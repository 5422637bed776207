"""`caspi eval` on hypotheses files and on a tiny model, and `caspi compare` between two eval folders or a model and
an eval folder (`compare_systems`)."""

from __future__ import annotations

import csv
import hashlib
import json
import re

import jiwer
import numpy as np
import pytest
from lhotse import CutSet

from caspi.cli import main
from caspi.data.cuts import make_cut, read_manifest, write_manifest
from caspi.data.text import for_scoring
from caspi.config import EvalConfig
from caspi.errors import ConfigError, DataError
from caspi.eval.evaluate import evaluate
from caspi.eval.compare import compare, compare_systems
from caspi.testing import save_tiny_model

SENTENCES = ["שלום עולם יפה", "הילד הולך לבית הספר", "מחר נלך לים", "אני אוהב לקרוא ספרים", "הגשם יורד בחוץ"]


def manifest(tmp_path, n=40):
    cuts = []
    for i in range(n):
        domain = ("studio", "whatsapp")[i % 2]
        cuts.append(make_cut(f"utt-{i:03d}", tmp_path / f"audio/clip{i:03d}.flac", 32000, SENTENCES[i % 5],
                             domain=domain))
    return write_manifest(CutSet.from_cuts(cuts), tmp_path / "eval.jsonl.gz")


def write_hyps(path, hyps: dict[str, str]):
    path.write_text("".join(json.dumps({"id": k, "hypothesis": v}, ensure_ascii=False) + "\n" for k, v in hyps.items()))
    return path


def corrupt(text: str, rng, rate: float) -> str:
    words = text.split()
    return " ".join(w if rng.random() > rate else "טעות" for w in words)


def test_eval_of_a_hypotheses_file_matches_jiwer_per_domain(tmp_path, capsys):
    m = manifest(tmp_path)
    rng = np.random.default_rng(0)
    refs = {f"utt-{i:03d}": SENTENCES[i % 5] for i in range(40)}
    hyps = {k: corrupt(v, rng, 0.3) for k, v in refs.items()}
    hyps["utt-003"] = ""  # an empty hypothesis: all deletions, counted
    keyed = {("clip001" if k == "utt-001" else k): v for k, v in hyps.items()}  # one keyed by the audio file stem
    assert main(["eval", "--hypotheses", str(write_hyps(tmp_path / "h.jsonl", keyed)), "--manifest", str(m),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "overall (micro)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for domain, parity in (("studio", 0), ("whatsapp", 1)):
        ids = [k for i, k in enumerate(refs) if i % 2 == parity]
        expected = jiwer.wer([for_scoring(refs[k]) for k in ids], [for_scoring(hyps[k]) for k in ids])
        assert summary["domains"][domain]["wer"] == pytest.approx(expected)
        lo, hi = summary["domains"][domain]["wer_ci95"]
        assert lo <= summary["domains"][domain]["wer"] <= hi
    overall = summary["overall"]
    assert overall["wer"] == pytest.approx(jiwer.wer([for_scoring(refs[k]) for k in refs],
                                                     [for_scoring(hyps[k]) for k in refs]))
    domain_wers = [summary["domains"][d]["wer"] for d in ("studio", "whatsapp")]
    assert overall["wer_macro"] == pytest.approx(np.mean(domain_wers))
    assert summary["empty_hypotheses"] == 1
    record = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[3])
    assert record["id"] == "utt-003" and record["word_deletions"] == record["ref_words"] > 0


def test_mismatched_hypotheses_are_errors_with_counts(tmp_path):
    m = manifest(tmp_path, n=6)
    hyps = {f"utt-{i:03d}": "x" for i in range(4)}
    with pytest.raises(DataError, match="no hypothesis for 2 of 6"):
        evaluate(m, tmp_path / "o", hypotheses=str(write_hyps(tmp_path / "a.jsonl", hyps)), progress=False)
    hyps = {f"utt-{i:03d}": "x" for i in range(6)} | {"other": "y"}
    with pytest.raises(DataError, match="1 hypotheses match no utterance"):
        evaluate(m, tmp_path / "o", hypotheses=str(write_hyps(tmp_path / "b.jsonl", hyps)), progress=False)


def test_compare_finds_a_planted_improvement_and_fails_if_worse(tmp_path, capsys):
    m = manifest(tmp_path, n=200)
    rng = np.random.default_rng(1)
    refs = {f"utt-{i:03d}": SENTENCES[i % 5] for i in range(200)}
    bad = {k: corrupt(v, rng, 0.5) for k, v in refs.items()}
    good = {k: corrupt(v, rng, 0.05) for k, v in refs.items()}
    for name, hyps in (("bad", bad), ("good", good), ("bad2", bad)):
        evaluate(m, tmp_path / name, hypotheses=str(write_hyps(tmp_path / f"{name}.jsonl", hyps)), progress=False)
    assert main(["compare", str(tmp_path / "bad"), str(tmp_path / "good"), "--out", str(tmp_path / "cmp"),
                 "--names", "round 1", "round 2", "--fail-if-worse"]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["verdict"] for r in rows] == ["better"] * 3 and all(r["p_adjusted"] < 0.01 for r in rows)
    table = list(csv.reader((tmp_path / "cmp" / "comparison.csv").open()))
    assert table[0][:4] == ["dataset", "round 1 WER", "round 2 WER", "improvement (points)"]
    assert [row[0] for row in table[1:]] == ["studio", "whatsapp", "overall"] and float(table[-1][3]) > 20
    assert "| overall |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 10_000
    # B worse than A: exit 1 with --fail-if-worse; identical systems: p = 1, no difference.
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "good"), str(tmp_path / "bad"), "--out", str(tmp_path / "c2"),
                 "--fail-if-worse"]) == 1
    assert "significantly worse on studio, whatsapp, overall" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "bad"), str(tmp_path / "bad2"), "--out", str(tmp_path / "c3")]) == 0
    rows = json.loads((tmp_path / "c3" / "comparison.json").read_text())["rows"]
    assert all(r["p_value"] == 1.0 and r["verdict"] == "no significant difference" for r in rows)


def test_compare_refuses_folders_of_different_utterances(tmp_path, capsys):
    for name, n in (("a", 10), ("b", 8)):
        folder = tmp_path / f"m{name}"
        folder.mkdir()
        hyps = write_hyps(tmp_path / f"{name}.jsonl", {f"utt-{i:03d}": "x" for i in range(n)})
        evaluate(manifest(folder, n=n), tmp_path / name, hypotheses=str(hyps), progress=False)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 1
    assert "2 only in A" in capsys.readouterr().err


@pytest.mark.espeak
def test_eval_of_a_model_folder_decodes_every_clip(synth_corpus, tmp_path):
    clips = write_manifest(read_manifest(synth_corpus.eval_manifest).subset(first=6), tmp_path / "eval.jsonl.gz")
    save_tiny_model(tmp_path / "model", SENTENCES, seed=0, size="xs")
    result = evaluate(clips, tmp_path / "out", model=str(tmp_path / "model"),
                      config=EvalConfig(max_new_tokens=4, batch_size=4), resamples=50, progress=False)
    assert result.summary["overall"]["utterances"] == 6 and result.summary["decoding"]["clips_per_s"] > 0
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 6


def _two_eval_folders(tmp_path, n=12):
    m = manifest(tmp_path, n=n)
    for name in ("a", "b"):
        hyps = {f"utt-{i:03d}": SENTENCES[i % 5] if name == "a" else "x" for i in range(n)}
        evaluate(m, tmp_path / name, hypotheses=str(write_hyps(tmp_path / f"{name}.jsonl", hyps)), resamples=20,
                 progress=False)
    return tmp_path / "a", tmp_path / "b"


def test_eval_writes_summary_last_with_the_predictions_record(tmp_path):
    a, _ = _two_eval_folders(tmp_path)
    summary = json.loads((a / "summary.json").read_text())
    data = (a / "predictions.jsonl").read_bytes()
    assert summary["predictions"] == {"file": "predictions.jsonl", "utterances": 12,
                                      "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(p.name for p in a.iterdir()) == ["predictions.jsonl", "summary.json"]  # no temp files left


@pytest.mark.parametrize("damage, message", [
    ("cut mid-line", r"predictions\.jsonl:12: not a JSON object"),
    ("garbled line", r"predictions\.jsonl:3: not a JSON object"),
    ("missing field", r"predictions\.jsonl:2: `ref_words` missing or not a count"),
    ("last line dropped", r"predictions\.jsonl: not the file summary\.json was written for \(11 records, 12"),
    ("no summary", r"incomplete eval folder: predictions\.jsonl without summary\.json"),
])
def test_compare_names_a_damaged_or_incomplete_eval_folder(tmp_path, capsys, damage, message):
    a, b = _two_eval_folders(tmp_path)
    path = b / "predictions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if damage == "cut mid-line":
        path.write_text("".join(lines[:-1]) + lines[-1][:30], encoding="utf-8")
    elif damage == "garbled line":
        path.write_text("".join(lines[:2] + ["{not json\n"] + lines[3:]), encoding="utf-8")
    elif damage == "missing field":
        record = json.loads(lines[1])
        del record["ref_words"]
        path.write_text("".join(lines[:1] + [json.dumps(record) + "\n"] + lines[2:]), encoding="utf-8")
    elif damage == "last line dropped":
        path.write_text("".join(lines[:-1]), encoding="utf-8")
    else:
        (b / "summary.json").unlink()
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "cmp" / "comparison.json").exists()


def test_an_interrupted_re_eval_leaves_an_incomplete_folder_not_a_stale_one(tmp_path, monkeypatch):
    a, b = _two_eval_folders(tmp_path)
    from caspi.eval import evaluate as evaluate_module

    def killed(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "write_text_atomic", killed)
    hyps = {f"utt-{i:03d}": "y" for i in range(12)}
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path / "eval.jsonl.gz", b, hypotheses=str(write_hyps(tmp_path / "c.jsonl", hyps)),
                 progress=False)
    monkeypatch.undo()
    with pytest.raises(DataError, match="incomplete eval folder"):
        compare(a, b, tmp_path / "cmp")


def test_compare_systems_evaluates_a_model_first_and_takes_an_eval_folder_as_it_is(synth_corpus, tmp_path):
    model = save_tiny_model(tmp_path / "base", SENTENCES)
    eval_manifest = synth_corpus.eval_manifest
    ids = [c.id for c in CutSet.from_file(eval_manifest)]
    hyps = {i: "x" for i in ids}
    folder = tmp_path / "other"
    evaluate(eval_manifest, folder, hypotheses=str(write_hyps(tmp_path / "o.jsonl", hyps)), resamples=20,
             progress=False)
    out = tmp_path / "cmp"
    result = compare_systems(model, folder, out, manifest=eval_manifest,
                             config=EvalConfig(max_new_tokens=2, batch_size=3), resamples=20, progress=False)
    # A, a model, was evaluated into OUT/eval-a with the given settings; B, an eval folder, was read as it is
    summary = json.loads((out / "eval-a" / "summary.json").read_text())
    assert summary["model"] == str(model) and summary["overall"]["utterances"] == len(ids)
    assert summary["decoding"]["batch_size"] == 3 and summary["resamples"] == 20
    assert not (out / "eval-b").exists()
    assert result.names == ("base", "other") and result.out_dir == out
    assert json.loads((out / "comparison.json").read_text())["a"] == str(out / "eval-a")
    assert [r["dataset"] for r in result.rows][-1] == "overall"


def test_compare_systems_needs_a_manifest_for_a_model(tmp_path):
    with pytest.raises(ConfigError, match="runs/r1 is not an eval output folder; pass --manifest"):
        compare_systems("runs/r1", tmp_path / "b", tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()



def test_eval_counts_loops_per_domain_and_reads_folders_without_the_new_fields(tmp_path):
    m = manifest(tmp_path, n=6)
    hyps = {f"utt-{i:03d}": SENTENCES[i % 5] for i in range(6)}
    hyps["utt-001"] = "תודה " * 12  # whatsapp (odd ids): the known failure, one word until the token limit
    result = evaluate(m, tmp_path / "out", hypotheses=str(write_hyps(tmp_path / "h.jsonl", hyps)), resamples=20,
                      progress=False)
    assert result.summary["loops"] == 1
    assert result.summary["domains"]["whatsapp"]["loops"] == 1 and result.summary["domains"]["studio"]["loops"] == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["loop"] for r in records] == [False, True, False, False, False, False]
    assert not any("chunks" in r for r in records)  # no model: nothing decoded in chunks
    # A folder written before `loop` and `chunks` existed: compare reads it as it reads a new one.
    old = tmp_path / "old"
    old.mkdir()
    text = "".join(json.dumps({k: v for k, v in r.items() if k != "loop"}, ensure_ascii=False) + "\n"
                   for r in records)
    (old / "predictions.jsonl").write_text(text, encoding="utf-8")
    summary = {k: v for k, v in result.summary.items() if k != "loops"}
    summary["predictions"] = {**summary["predictions"], "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (old / "summary.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    assert main(["compare", str(tmp_path / "out"), str(old), "--out", str(tmp_path / "cmp")]) == 0


@pytest.mark.espeak
def test_eval_decodes_a_long_clip_in_chunks_and_short_clips_as_before(synth_corpus, tmp_path, monkeypatch):
    """A 70 s recording (eval clips joined with 1 s pauses) next to short clips: the long one is decoded in chunks of
    at most 30 s cut in the pauses and recorded as such; the short ones go to the model as they always did (one
    duration-sorted batch of whole clips, the guard off)."""
    from caspi.data.audio import write_flac
    from caspi.data.cuts import load_cut_audio
    from caspi.models import get_family

    cuts = list(read_manifest(synth_corpus.eval_manifest))
    pause = np.zeros(16_000, np.float32)
    parts, texts = [], []
    while sum(len(p) for p in parts) < 70 * 16_000:
        cut = cuts[len(texts) % len(cuts)]
        parts += [load_cut_audio(cut), pause]
        texts.append(cut.supervisions[0].text)
    long_audio = np.concatenate(parts)
    write_flac(tmp_path / "long.flac", long_audio)
    long_cut = make_cut("long", tmp_path / "long.flac", len(long_audio), " ".join(texts), domain="d1")
    m = write_manifest(CutSet.from_cuts([long_cut, *cuts[:3]]), tmp_path / "eval.jsonl.gz")
    model_dir = save_tiny_model(tmp_path / "model", SENTENCES, seed=0, size="xs")
    config = EvalConfig(max_new_tokens=4, batch_size=4)
    family_type = type(get_family("qwen3_asr"))
    calls, real_decode = [], family_type.decode

    def spy(self, model, processor, clips, **kwargs):
        calls.append(([len(c) for c in clips], kwargs))
        return real_decode(self, model, processor, clips, **kwargs)

    monkeypatch.setattr(family_type, "decode", spy)
    result = evaluate(m, tmp_path / "out", config, model=str(model_dir), resamples=20, progress=False)
    decoding = result.summary["decoding"]
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "predictions.jsonl").read_text().splitlines())}
    chunks = records["long"]["chunks"]
    assert decoding["chunked_utterances"] == 1 and decoding["chunks"] == len(chunks) >= 3
    assert chunks[0][0] == 0 and chunks[-1][1] == pytest.approx(len(long_audio) / 16_000, abs=1e-3)
    assert all(end - start <= 30 for start, end, _ in chunks)
    assert [cut for _, _, cut in chunks] == ["silence"] * (len(chunks) - 1) + ["end"]
    assert all("chunks" not in records[c.id] for c in cuts[:3]) and all("loop" in r for r in records.values())
    by_duration = sorted(cuts[:3], key=lambda c: c.duration)
    assert calls[0] == ([c.num_samples for c in by_duration],
                        dict(max_new_tokens=4, batch_size=3, num_beams=1, language=None, no_repeat_ngram_size=0,
                             repetition_penalty=1.0))
    # The long recording's chunks: the rest of the calls, at most 4 per call, none over 30 s.
    sizes = [n for lengths, _ in calls[1:] for n in lengths]
    assert len(sizes) == len(chunks) and max(sizes) <= 30 * 16_000 and all(len(c[0]) <= 4 for c in calls[1:])
