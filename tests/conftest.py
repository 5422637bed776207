"""Shared fixtures and the rules on skipped tests.

espeak-ng (the synthetic corpus's voice) is needed by the training, kill/resume, DDP, audit and end-to-end tests.
Without it they skip on a developer's machine, but they fail where it is required: under CI (`CI=true`) and in
`make test` (`CASPI_REQUIRE_ESPEAK=1`). Mark a test `@pytest.mark.espeak`, or depend on the `espeak` fixture from a
fixture that synthesises audio.

Under CI a session that skipped any test for a reason other than a GPU fails, with the list of those tests: a green
CI run means every test ran.

`synth_corpus` is the small synthesised corpus the whole session shares (built once, read-only); the helpers tests
repeat live in `caspi.testing`. At import this file needs only the standard library and pytest: tests/test_conftest.py
runs it in subprocess sessions on generated tests, which must not pay for importing torch and lhotse.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_HEBREW = REPO.parent / "shared" / "real-hebrew"
GPU_REASON = re.compile(r"\b(gpus?|cuda)\b", re.IGNORECASE)  # the only skips CI accepts
_SKIPS: list[tuple[str, str]] = []  # (test id, reason) of every skip in this session


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def in_ci() -> bool:
    return _env_flag("CI")


def espeak_required() -> bool:
    return in_ci() or _env_flag("CASPI_REQUIRE_ESPEAK")


def skip_or_fail(reason: str, required_by: str | None) -> None:
    """Skip the current test, or fail it when what it lacks is required here (`required_by` says why)."""
    if required_by:
        pytest.fail(f"{reason}; required under {required_by}", pytrace=False)
    pytest.skip(reason)


def need_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        skip_or_fail("espeak-ng is not installed (run scripts/ensure-espeak, or apt-get install espeak-ng)",
                     "CI=true and CASPI_REQUIRE_ESPEAK=1 (make test)" if espeak_required() else None)


def pytest_configure(config):
    config.addinivalue_line("markers", "espeak: needs the espeak-ng binary (an error under CI and `make test`)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("espeak") is not None:
        need_espeak()


@pytest.fixture(scope="session")
def espeak() -> None:
    """Depend on this from a fixture that needs espeak-ng: it skips or fails as `pytest.mark.espeak` does."""
    need_espeak()


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too
        longrepr = report.longrepr  # (path, line, "Skipped: reason") for a skip
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        _SKIPS.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):  # a module that skips as a whole
    _record_skip(report)


def _forbidden_skips() -> list[tuple[str, str]]:
    if not in_ci():
        return []
    return [(nodeid, reason) for nodeid, reason in _SKIPS if not GPU_REASON.search(reason)]


def pytest_sessionfinish(session, exitstatus):
    if _forbidden_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    forbidden = _forbidden_skips()
    if forbidden:
        terminalreporter.write_sep("=", f"{len(forbidden)} tests skipped under CI=true for a reason other than a GPU",
                                   red=True)
        for nodeid, reason in forbidden:
            terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")
        terminalreporter.write_line("CI fails on these: install what they need (only GPU tests may skip).")


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory, espeak):
    """The corpus the session shares (`caspi.testing.SHARED_CORPUS`): its `SynthSummary`. Every file and folder in it
    is read-only, so no test can change what the others read: a test that must write copies what it needs."""
    from caspi import testing  # imported when first used, not with this file (module docstring)

    summary = testing.synthesize_corpus(tmp_path_factory.mktemp("synth-corpus"))
    for path in [summary.out_dir, *summary.out_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return summary


@pytest.fixture
def real_hebrew_manifest() -> Path:
    """The 17 real SASpeech recordings (read in place from ../shared; never copied into the repo). CI has them."""
    path = REAL_HEBREW / "saspeech" / "manifest.jsonl"
    if not path.is_file():
        skip_or_fail(f"real Hebrew recordings not present at {path}", "CI=true" if in_ci() else None)
    return path
