"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright (its own browser download is
never used: `caspi.report.screenshot.launch` points `executable_path` at /usr/bin/chromium). The page opens from disk
as a person opens it, with no console error, every audio clip loads its metadata (a duration matching the clip's),
every image decodes, the sections are there, Hebrew transcripts lay out right to left, and nothing is requested
beyond the report folder. A full-page screenshot lands in the test's tmp folder.

docs/report.png is made not here but by the product, from the demo's report: `caspi report ... --screenshot PNG`
(tests/report/test_screenshot.py). Without Chromium this test skips, and under CI it fails (the `chromium` fixture)."""

from __future__ import annotations

from caspi.data.cuts import read_manifest
from caspi.report.build import build_report
from caspi.report.screenshot import launch, wait_for_audio

AUDIO_STATE = """() => Array.from(document.querySelectorAll('audio')).map(a => ({
    src: a.getAttribute('src'), ready: a.readyState, duration: a.duration, error: a.error && a.error.code}))"""
IMAGES = """() => Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
    width: i.naturalWidth}))"""


def test_the_report_opens_in_chromium_with_working_audio(project, chromium, tmp_path, injected):
    out = tmp_path / "report"
    result = build_report([project / "phase0", project / "r1-vs-r2", project / "round2"], out, max_samples=10)
    audit = result.audits[0]
    with_audio = [s for s in audit.flagged[:audit.shown] if s.audio]
    assert len(with_audio) >= 3
    durations = {c.id: c.duration for c in read_manifest(project / "data" / "train.jsonl.gz")}
    errors, requests = [], []
    with launch(chromium) as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 1500})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(result.page.resolve().as_uri(), wait_until="load")
        wait_for_audio(page)  # every clip's metadata read or failed; then look at which
        audio = page.evaluate(AUDIO_STATE)
        images = page.evaluate(IMAGES)
        sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
        directions = page.eval_on_selector_all(
            "p.transcript", "els => els.map(e => [e.textContent, getComputedStyle(e).direction])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    assert errors == []
    assert [a["src"] for a in audio] == [s.audio for s in with_audio]
    for a, s in zip(audio, with_audio):
        assert a["error"] is None and a["ready"] >= 1, a
        assert abs(a["duration"] - durations[s.id]) < 0.02, (a, durations[s.id])
    assert len(images) == 2 and all(i["complete"] and i["width"] > 0 for i in images), images
    assert sections == ["summary", "phase0", "comparison", "training", "commands"]
    assert any(h.startswith("round 1 vs round 2") for h in headings)
    hebrew = [d for text, d in directions if any("\u0590" <= ch <= "\u05ff" for ch in text)]
    assert hebrew and set(hebrew) == {"rtl"}
    assert [d for text, d in directions if text == injected] == ["ltr"]
    report_dir = out.resolve().as_uri()
    assert requests and all(url.startswith(report_dir + "/") for url in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 50_000  # a page was drawn, not a blank sheet

