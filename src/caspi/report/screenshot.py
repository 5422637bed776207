"""A screenshot of report.html as a person sees it: the page opened from disk in headless Chromium, every audio
player loaded, saved as a small palette PNG (the README's docs/report.png is one).

    screenshot(Path("runs/demo/report/report.html"), Path("docs/report.png"))  # the top 1200 × 1500 px

The browser is Debian's Chromium (/usr/bin/chromium; `scripts/ensure-chromium` installs it), driven by Playwright
(the `dev` extra): Playwright's own browser download is never used. Both are optional: without them `screenshot`
raises DependencyError saying what to install. The browser test (tests/report/test_browser.py) opens the page with
the same browser, flags and wait.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from caspi.errors import DataError, DependencyError

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package
# What a closed network needs: no background requests, no component or sync updates. Playwright gives every launch
# a fresh, temporary user-data-dir of its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# True once every <audio> has read its metadata (readyState ≥ HAVE_METADATA) or failed: the players show their
# durations, and a broken clip is an error the caller can look for, not a wait that never ends.
AUDIO_SETTLED = "() => Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1 || a.error)"
AUDIO_TIMEOUT_MS = 20_000


def missing_browser(chromium: Path | None = None) -> list[str]:
    """What is missing to drive `chromium` (None: CHROMIUM), each with how to install it; empty when nothing is."""
    chromium = CHROMIUM if chromium is None else Path(chromium)
    problems = []
    if not chromium.is_file():
        problems.append(f"{chromium} is missing (run scripts/ensure-chromium, or apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401  (the dev extra; only screenshots need it)
    except ImportError:
        problems.append("the playwright package is missing (pip install playwright, or pip install -e '.[dev]')")
    return problems


@contextmanager
def launch(chromium: Path | None = None) -> Iterator:
    """A headless Playwright `Browser` on `chromium` (None: CHROMIUM) with the network-quiet flags; closed on exit.
    Raises DependencyError, saying what to install, when the browser or Playwright is missing."""
    chromium = CHROMIUM if chromium is None else Path(chromium)
    problems = missing_browser(chromium)
    if problems:
        raise DependencyError("a screenshot of the report needs a browser: " + "; ".join(problems))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_for_audio(page, timeout_ms: int = AUDIO_TIMEOUT_MS) -> None:
    """Block until every <audio> on the Playwright `page` has its metadata or an error."""
    page.wait_for_function(AUDIO_SETTLED, timeout=timeout_ms)


def save_small(png: bytes, target: Path, colors: int = 64) -> Path:
    """`png` (encoded PNG bytes) as a `colors`-colour palette PNG at `target`: text and flat plots survive the
    median-cut quantising, and the image shrinks about 3× (the test project's 1200 × 1500 px top: 75 KB, against
    Chromium's own 224 KB PNG)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 1500, full_page: bool = False,
               colors: int = 64, chromium: Path | None = None) -> Path:
    """Open `page` (a report.html) from disk in headless `chromium` (None: CHROMIUM) with a `width` × `height` px
    viewport, wait until its audio players are loaded, and write the top `width` × `height` px (the whole page
    with `full_page`) to `png` as a `colors`-colour palette PNG. Returns `png`.

    Raises DataError when `page` is not a file or its audio does not settle within 20 s, and DependencyError
    when Chromium or Playwright is missing."""
    page, png = Path(page), Path(png)
    if not page.is_file():
        raise DataError(f"{page}: no such page to screenshot (expected the report.html `caspi report` writes)")
    with launch(chromium) as browser:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout  # importable: launch checked it

        tab = browser.new_page(viewport={"width": width, "height": height})
        tab.goto(page.resolve().as_uri(), wait_until="load")
        try:
            wait_for_audio(tab)
        except PlaywrightTimeout as e:
            raise DataError(f"{page}: its audio players did not load within {AUDIO_TIMEOUT_MS / 1000:.0f} s") from e
        shot = tab.screenshot(full_page=full_page, type="png")
    return save_small(shot, png, colors)
