"""`caspi compare` gives CER its own paired bootstrap: interval, p-value, Benjamini–Hochberg and verdict, in the
CSV, JSON and Markdown, next to WER's."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from lhotse import CutSet

from caspi.cli import main
from caspi.data.cuts import write_manifest
from caspi.eval.evaluate import evaluate
from caspi.eval.bootstrap import bootstrap_ci, independent_seeds
from caspi.scoring import utterance_counts
from caspi.testing import metadata_cut

SENTENCES = ["שלום עולם יפה", "הילד הולך לבית הספר", "מחר נלך לים", "אני אוהב לקרוא ספרים", "הגשם יורד בחוץ"]
N = 120


def system_outputs(tmp_path):
    """Two systems with the same wrong words in every utterance (so the same word errors and WER) but different
    characters: A misspells the last letter of each wrong word, B writes it as a run of one letter, every character
    wrong. WER cannot tell them apart; CER must say B is worse."""
    rng = np.random.default_rng(4)
    refs, a, b = {}, {}, {}
    for i in range(N):
        words = SENTENCES[i % len(SENTENCES)].split()
        wrong = rng.random(len(words)) < 0.4
        key = f"utt-{i:03d}"
        refs[key] = " ".join(words)
        a[key] = " ".join(w[:-1] + ("ק" if w[-1] != "ק" else "ר") if bad else w for w, bad in zip(words, wrong))
        b[key] = " ".join("ץ" * len(w) if bad else w for w, bad in zip(words, wrong))
    cuts = [metadata_cut(key, 2.0, text, ("studio", "whatsapp")[i % 2]) for i, (key, text) in enumerate(refs.items())]
    manifest = write_manifest(CutSet.from_cuts(cuts), tmp_path / "eval.jsonl.gz")
    for name, hyps in (("a", a), ("b", b)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": k, "hypothesis": v}, ensure_ascii=False) + "\n"
                                for k, v in hyps.items()))
        evaluate(manifest, tmp_path / name, hypotheses=str(path), progress=False)
    return refs, a, b


def test_compare_gives_cer_an_interval_a_p_value_and_a_verdict(tmp_path, capsys):
    refs, a, b = system_outputs(tmp_path)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp"),
                 "--names", "round 1", "round 2", "--fail-if-worse"]) == 0  # WER decides --fail-if-worse
    printed = capsys.readouterr().out
    assert "CER by dataset" in printed and "worse" in printed
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["dataset"] for r in rows] == ["studio", "whatsapp", "overall"]
    for r in rows:
        # identical word errors: WER's paired test has nothing to see
        assert r["difference"] == 0 and r["p_value"] == 1.0 and r["verdict"] == "no significant difference"
        assert r["cer_difference"] == pytest.approx(r["cer_b"] - r["cer_a"]) and r["cer_difference"] > 0.05
        assert r["cer_difference_ci95"][0] > 0 and r["cer_p_adjusted"] < 0.01 and r["cer_verdict"] == "worse"
        assert r["cer_a_ci95"][0] < r["cer_a"] < r["cer_a_ci95"][1]
        assert r["cer_improvement_points"] == pytest.approx(-100 * r["cer_difference"])
    # BH across the two domains (one family per metric): with m = 2 the larger p is kept, the smaller doubled
    domain_p = sorted(r["cer_p_value"] for r in rows[:2])
    assert sorted(r["cer_p_adjusted"] for r in rows[:2]) == pytest.approx([min(2 * domain_p[0], domain_p[1]),
                                                                          domain_p[1]])
    # the overall CER interval of A is the bootstrap of A's pooled character counts, from the overall group's stream
    ids = list(refs)
    counts = utterance_counts([refs[k] for k in ids], [a[k] for k in ids])
    stream = independent_seeds(0, 3)[2]  # groups: studio, whatsapp, overall; compare's default seed 0
    assert rows[2]["cer_a_ci95"] == pytest.approx(bootstrap_ci(counts.char_errors, counts.ref_chars, 1000, stream))

    table = list(csv.reader((tmp_path / "cmp" / "comparison.csv").open(encoding="utf-8")))
    header = table[0]
    assert header[:4] == ["dataset", "round 1 WER", "round 2 WER", "improvement (points)"]
    assert {"round 1 CER", "round 2 CER", "CER p (BH)", "CER verdict"} <= set(header)
    assert [row[header.index("CER verdict")] for row in table[1:]] == ["worse"] * 3
    markdown = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert "## WER" in markdown and "## CER" in markdown and "round 2 CER" in markdown


def test_compare_of_identical_systems_has_no_cer_difference(tmp_path):
    system_outputs(tmp_path)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "same")]) == 0
    rows = json.loads((tmp_path / "same" / "comparison.json").read_text())["rows"]
    assert all(r["cer_p_value"] == 1.0 and r["cer_difference_ci95"] == [0.0, 0.0]
               and r["cer_verdict"] == "no significant difference" for r in rows)
