"""`caspi report ... --screenshot PNG` (`caspi.report.screenshot`): the top of report.html as Chromium draws it, a
small palette PNG (how docs/report.png is made). One browser launch; the rest runs without a browser."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from caspi.cli import main
from caspi.errors import DataError
from caspi.report import screenshot as shots


def test_report_writes_a_palette_screenshot_of_the_page_top(project, chromium, tmp_path, capsys):
    out, png = tmp_path / "report", tmp_path / "docs" / "report.png"
    assert main(["report", str(project / "phase0"), str(project / "r1-vs-r2"), str(project / "round2"),
                 "--out", str(out), "--screenshot", str(png)]) == 0
    assert f"  screenshot {png}\n" in capsys.readouterr().out
    image = Image.open(png)
    assert image.size == (1200, 1500) and image.mode == "P"
    colours = image.convert("RGB").getcolors(maxcolors=256)
    # Quantised to at most 64 colours, yet a drawn page (text, tables, a plot), not a blank sheet.
    assert colours is not None and 16 <= len(colours) <= 64, colours and len(colours)
    assert max(n for n, _ in colours) < 0.95 * 1200 * 1500  # the background is not everything
    assert 20_000 < png.stat().st_size < 150_000  # Chromium's own PNG of this page: about 224 KB


def test_a_missing_chromium_fails_with_how_to_install_it(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shots, "CHROMIUM", tmp_path / "no-chromium")
    out, png = tmp_path / "report", tmp_path / "report.png"
    assert main(["report", str(project / "r1-vs-r2"), "--out", str(out), "--screenshot", str(png)]) == 1
    captured = capsys.readouterr()
    assert "a screenshot of the report needs a browser" in captured.err
    assert f"{tmp_path / 'no-chromium'} is missing (run scripts/ensure-chromium" in captured.err
    assert (out / "report.html").is_file() and not png.exists()  # the page itself was written first


def test_a_missing_playwright_is_named_with_its_install_command(tmp_path, monkeypatch):
    browser = tmp_path / "chromium"
    browser.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # `import` then raises ImportError
    assert shots.missing_browser(browser) == [
        "the playwright package is missing (pip install playwright, or pip install -e '.[dev]')"]


def test_a_page_that_is_not_there_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such page to screenshot"):
        shots.screenshot(tmp_path / "report.html", tmp_path / "report.png")
