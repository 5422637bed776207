"""report.html's structure, read with the standard library's HTML parser (no browser): the sections, every audio
clip and image a file beside the page, nothing fetched from elsewhere, transcripts escaped and laid out by
direction, the flagged samples ranked with their values, the curves' markers, and the commands."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import soundfile as sf

from caspi.data.cuts import read_manifest
from caspi.errors import ConfigError, DataError
from caspi.report.build import build_report
from caspi.report.commands import COMMANDS_FILE
from caspi.report.runs import RunSection, phase_starts
from caspi.report.runs import _facts as runs_section_facts


class Page(HTMLParser):
    """Every start tag (name, attributes) with the text inside it, and the page's text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.texts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    def all(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    @property
    def text(self) -> str:
        return "".join(self.texts)


@pytest.fixture(scope="module")
def built(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "report"
    result = build_report([project / "phase0", project / "r1-vs-r2", project / "round2"], out, max_samples=3,
                          command=["report", "phase0", "r1-vs-r2", "round2", "--out", "report"])
    html = result.page.read_text(encoding="utf-8")
    return result, html, Page(html)


def test_the_page_has_every_section_and_only_local_files(built):
    result, html, page = built
    assert [a["id"] for a in page.all("section")] == ["summary", "phase0", "comparison", "training", "commands"]
    assert page.all("script") == [] and page.all("link") == []  # no script at all, no external stylesheet
    sources = [a["src"] for a in page.all("audio") + page.all("img")]
    assert sources and all(not s.startswith(("http:", "https:", "//", "/")) for s in sources)
    for src in sources:
        assert (result.out_dir / src).is_file(), src
    assert "http://" not in html and "https://" not in html
    style = html[html.index("<style>"):html.index("</style>")]
    assert '"DejaVu Sans"' in style and "&#34;" not in style  # the style sheet is not escaped (it would break)
    assert len(page.all("img", **{"class": "plot"})) == 1 and len(page.all("img", **{"class": "plot curves"})) == 1


def test_audio_clips_are_the_flagged_samples_at_16khz(built, project):
    result, _, page = built
    audit = result.audits[0]
    players = page.all("audio")
    assert len(players) == audit.shown == 3 and all("controls" in a and a["preload"] == "metadata" for a in players)
    cuts = {c.id: c for c in read_manifest(project / "data" / "train.jsonl.gz")}
    for s in audit.flagged[:audit.shown]:
        if s.audio is None:
            assert "no_speech" not in s.reasons or s.audio_note  # unreadable audio says why
            continue
        info = sf.info(str(result.out_dir / s.audio))
        assert info.samplerate == 16000 and info.channels == 1
        assert info.duration == pytest.approx(cuts[s.id].duration, abs=0.01)
    assert sorted(p.name for p in result.audio_files) == sorted(Path(s.audio).name for s in audit.flagged[:3])


def test_transcripts_are_escaped_and_carry_their_direction(built, injected):
    _, html, page = built
    assert injected not in html  # the raw markup never reaches the page ...
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html  # ... only its escaped text
    assert injected in page.text  # and the reader sees it as it was written
    transcripts = page.all("p", **{"class": "transcript"})
    assert transcripts and all(a.get("dir") == "auto" for a in transcripts)


def test_flagged_samples_are_ranked_hard_first_then_by_score(built, injected):
    result, _, _ = built
    flagged = result.audits[0].flagged
    hard = [s.hard for s in flagged]
    assert hard == sorted(hard, reverse=True) and any(hard)  # every hard failure before every soft flag
    soft = [s.score for s in flagged if not s.hard and s.score is not None]
    assert soft == sorted(soft, reverse=True)
    latin = next(s for s in flagged if s.text == injected)
    assert latin.hard and "latin_script" in latin.reasons
    words = next(e.text for e in latin.evidence if e.reason == "latin_script")
    assert words.startswith("100% of the letters are Latin") and "limit 30%" in words
    rate = [s for s in flagged if {"rate_low", "rate_high"} & set(s.reasons)]
    for s in rate:  # "20.9 chars/s, median of all audited 11.0 (z +5.2)": the value, its reference and z
        text = next(e.text for e in s.evidence if e.reason.startswith("rate_"))
        assert " chars/s, " in text and "median" in text and "(z " in text
        assert s.score is not None and s.score > 3.0
        # ranked by the z the scorer flagged on, which the audit's report holds (`Scorer.flag_scores`)
        assert set(s.z) >= {"rate_low", "rate_high"} & set(s.reasons)
        assert s.score == pytest.approx(max(abs(z) for z in s.z.values()))


def test_the_decision_domains_and_comparison_are_on_the_page(built, project):
    result, _, page = built
    report = json.loads((project / "phase0" / "alignment_report.json").read_text())
    text = " ".join(page.text.split())
    assert f"{report['decision']} estimated low quality in the manifest: {report['low_quality_percentage']:.1f} %" \
        in text
    lo, hi = report["low_quality_ci95"]
    assert f"(95 % CI {lo:.1f}–{hi:.1f} %)" in text
    domain_rows = result.audits[0].domains
    assert [d for d, _ in domain_rows] == sorted(report["domain_statistics"])
    compare = json.loads((project / "r1-vs-r2" / "comparison.json").read_text())
    for row in compare["rows"]:
        assert f"{100 * row['cer_b']:.1f} %" in text and row["cer_verdict"] in text
    assert "round 1 vs round 2" in text


def test_the_run_shows_phases_resumes_and_its_recipe(built):
    result, _, page = built
    run = result.runs[0]
    assert run.phases == [(0, "Strategy B"), (39, "Strategy A")]
    assert [r["step"] for r in run.resumes] == [30]
    facts = dict(run.facts)
    assert facts["resumed"] == "at step 30 (step-000030)" and facts["checkpoints saved"] == "6"
    assert [e["event"] for e in run.listed_events] == ["phase", "finished"]
    assert "round2-2xa100" in page.text and "unfreeze:" in (run.recipe_yaml or "")


def test_steps_trained_is_the_last_step_not_the_last_logged_one():
    """Train records come every log_every_steps (10 in the demo): a run that ended at step 2,472 logged its last at
    2,470, and its final eval, checkpoint and "finished" event say 2,472."""
    section = RunSection(folder=Path("round1"), meta={}, recipe_yaml=None,
                         train=[{"step": 2460, "epoch": 24, "phase": "scratch", "loss": 0.3},
                                {"step": 2470, "epoch": 24, "phase": "scratch", "loss": 0.25}],
                         evals=[{"step": 2472, "wer": 0.3, "cer": 0.16}],
                         events=[{"step": 2472, "event": "finished", "message": "finished at step 2472, epoch 24"}],
                         phases=[], resumes=[], curves=None)
    assert dict(runs_section_facts(section))["steps trained"] == "2,472 (epoch 24, phase scratch)"


def test_commands_are_listed_oldest_first_with_this_report_last(built, project):
    _, _, page = built
    lines = [t.strip() for t in page.texts if t.strip().startswith("$ caspi ")]
    assert [line.split()[2] for line in lines] == ["audit", "compare", "train", "train", "report"]
    assert f"--out {project / 'phase0'}" in lines[0]
    assert "exit 143 (preempted: saved a checkpoint; the next start resumes)" in page.text


def test_the_phase_of_each_step_comes_from_the_train_records():
    train = [{"kind": "train", "step": s, "phase": "B" if s < 5 else "A"} for s in range(1, 9)]
    events = [{"kind": "event", "step": 4, "event": "phase", "message": "switched to phase A"}]
    assert phase_starts(train, events) == [(0, "B"), (4, "A")]
    assert phase_starts([], []) == []


def test_a_parent_folder_stands_for_the_folders_in_it(project, report_out):
    result = build_report([project], report_out, max_samples=0)
    assert [a.folder.name for a in result.audits] == ["phase0"]
    assert [c.folder.name for c in result.compares] == ["r1-vs-r2"]
    assert [r.folder.name for r in result.runs] == ["round2"]
    assert "passed over data, eval-r1, eval-r2" in result.notes[0]
    assert result.audio_files == []  # --max-samples 0: listed in the table only


def test_a_missing_manifest_is_a_note_not_a_failure(project, copy_of, report_out):
    audit = copy_of(project / "phase0")
    report = json.loads((audit / "alignment_report.json").read_text())
    report["manifest"] = "moved/away.jsonl.gz"
    for entry in report["flagged"]:
        entry.pop("notes", None)  # the reasons' words are then worked out here, from scores.jsonl
    (audit / "alignment_report.json").write_text(json.dumps(report))
    (audit / COMMANDS_FILE).unlink()
    result = build_report([audit], report_out)
    section = result.audits[0]
    assert section.manifest is None and "moved/away.jsonl.gz was not found" in section.notes[0]
    assert result.audio_files == [] and all(s.audio_note for s in section.flagged)
    assert all(s.rows for s in section.flagged)  # the measurements still come from the report and scores.jsonl
    (audit / "cleaned.jsonl.gz").unlink()  # now no sample's domain is known but the flagged ones'
    rate = next(s for s in build_report([audit], report_out).audits[0].flagged if "rate_high" in s.reasons)
    assert "median of all audited" in rate.evidence[0].text  # never a median of the flagged samples alone


def test_unknown_reasons_and_statistics_show_up_generically(project, copy_of, report_out):
    """A scorer added later (here `snr`, with its reason `snr_low`), a model scorer's per-domain report and the
    report's `visibility` appear with their values without any change to the report code; a reason's note from
    the report (`Scorer.explain`) is shown as the scorer wrote it."""
    audit = copy_of(project / "phase0")
    report = json.loads((audit / "alignment_report.json").read_text())
    target, other = report["flagged"][0], report["flagged"][1]
    target["reasons"].append("snr_low")
    target["snr"] = {"db": 3.5, "frames": 12}
    other["notes"] = {other["reasons"][0]: "as the scorer says it"}
    with (audit / "scores.jsonl").open("a") as f:
        for i, cut in enumerate(read_manifest(project / "data" / "train.jsonl.gz")):
            value = 3.5 if cut.id == target["id"] else 20.0 + 0.1 * i
            f.write(json.dumps({"id": cut.id, "scorer": "snr", "version": "1", "model": None, "input": "x",
                                "values": {"db": value, "frames": 12}}) + "\n")
    report["scorers"].append({"name": "snr", "version": "1", "cache_key": "1", "thresholds": {"min_db": 5.0}})
    for domain, d in report["domain_statistics"].items():
        d["loss"] = {"sees": domain == "studio", "swap_recall": 0.95, "summary": f"summary of {domain}"}
    report["visibility"] = {"loss": {"sees": ["studio"], "cannot_see": ["broadcast", "d1", "whatsapp"]}}
    (audit / "alignment_report.json").write_text(json.dumps(report))
    result = build_report([audit], report_out)
    section = result.audits[0]
    sample = next(s for s in section.flagged if s.id == target["id"])
    words = next(e.text for e in sample.evidence if e.reason == "snr_low")
    assert words.startswith("snr.db 3.5 (median of all audited 21.") and "z −" in words.replace("-", "−")
    assert next(s for s in section.flagged if s.id == other["id"]).evidence[0].text == "as the scorer says it"
    assert ("loss.swap_recall", "loss swap recall") in section.domain_columns
    assert "loss, whatsapp: summary of whatsapp" in section.visibility
    assert section.visibility[0] == ("The loss scorer sees wrong transcripts in: studio; cannot see them in: "
                                     "broadcast, d1, whatsapp.")
    html = result.page.read_text()
    assert "snr_low" in html and "loss swap recall" in html and "summary of studio" in html


def test_an_earlier_report_is_replaced_and_other_folders_are_refused(project, report_out, tmp_path):
    build_report([project / "r1-vs-r2"], report_out)
    (report_out / "curves-9.png").write_bytes(b"stale")
    build_report([project / "r1-vs-r2"], report_out)
    assert not (report_out / "curves-9.png").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files and no report.html"):
        build_report([project / "r1-vs-r2"], busy)
    with pytest.raises(ConfigError, match="is one of the input folders"):
        build_report([project / "r1-vs-r2"], project / "r1-vs-r2")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p / "data" / "train.jsonl.gz", "is a file"),
    (lambda p: p / "eval-r1", "is an eval folder"),
    (lambda p: p / "data", "is not an audit folder .* and none of its sub-folders is one"),
])
def test_folders_that_are_none_of_the_kinds_are_refused(project, report_out, make, message):
    with pytest.raises(ConfigError, match=message):
        build_report([make(project)], report_out)


def test_a_damaged_metrics_file_names_its_line(project, copy_of, report_out):
    run = copy_of(project / "round2")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl:4: not a JSON record"):
        build_report([run], report_out)
    lines[3] = lines[4]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "tra')  # torn by a kill: skipped
    assert build_report([run], report_out).runs[0].train


def test_the_report_copies_nothing_it_does_not_show(built):
    result, _, page = built
    shown = {a["src"] for a in page.all("audio") + page.all("img")}
    written = {p.relative_to(result.out_dir).as_posix() for p in result.out_dir.rglob("*") if p.is_file()}
    assert written - shown == {"report.html"}
