"""The rules of tests/conftest.py, run on generated tests in a subprocess pytest: under CI a skip for any reason
but a GPU fails the session; without espeak-ng an espeak test skips on a developer's machine and fails where
espeak-ng is required (CI=true, or CASPI_REQUIRE_ESPEAK=1 as `make test` sets)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPS = '''
import pytest

def test_runs():
    pass

def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.skipif(True, reason="no GPUs here")
def test_marked_for_gpus():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
'''

NETWORK_SKIP = '''
import pytest

def test_needs_the_network():
    pytest.skip("no network")
'''

MODULE_SKIP = '''
import pytest

pytest.skip("this whole module is optional", allow_module_level=True)
'''

ESPEAK = '''
import pytest

@pytest.fixture(scope="session")
def corpus(espeak):
    return "synthesised"

@pytest.mark.espeak
def test_marked():
    pass

def test_through_a_fixture(corpus):
    assert corpus == "synthesised"
'''


def run_pytest(tmp_path: Path, sources: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """pytest in a subprocess on `sources` ({file name: code}) next to a copy of the real conftest.py."""
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    for name, code in sources.items():
        (tmp_path / name).write_text(code)
    base = {k: v for k, v in os.environ.items()
            if k not in ("CI", "CASPI_REQUIRE_ESPEAK", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_ci_accepts_gpu_skips_and_xfails(tmp_path):
    result = run_pytest(tmp_path, {"test_a.py": SKIPS}, {"CI": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout and "1 xfailed" in result.stdout


def test_ci_fails_on_any_other_skip_and_lists_it(tmp_path):
    result = run_pytest(tmp_path, {"test_a.py": SKIPS, "test_b.py": NETWORK_SKIP, "test_c.py": MODULE_SKIP},
                        {"CI": "true"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 tests skipped under CI=true for a reason other than a GPU" in result.stdout
    assert "SKIPPED test_b.py::test_needs_the_network: no network" in result.stdout
    assert "SKIPPED test_c.py: this whole module is optional" in result.stdout
    assert "test_needs_a_gpu:" not in result.stdout.split("other than a GPU")[1]


def test_outside_ci_a_skip_is_only_a_skip(tmp_path):
    result = run_pytest(tmp_path, {"test_b.py": NETWORK_SKIP}, {"CI": "false"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "other than a GPU" not in result.stdout


def test_missing_espeak_skips_on_a_developer_machine(tmp_path):
    no_espeak = tmp_path / "empty-bin"
    no_espeak.mkdir()
    result = run_pytest(tmp_path, {"test_e.py": ESPEAK}, {"PATH": str(no_espeak)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout and "espeak-ng is not installed" in result.stdout


def test_missing_espeak_is_an_error_where_it_is_required(tmp_path):
    no_espeak = tmp_path / "empty-bin"
    no_espeak.mkdir()
    for env in ({"CASPI_REQUIRE_ESPEAK": "1"}, {"CI": "true"}):
        result = run_pytest(tmp_path, {"test_e.py": ESPEAK}, {"PATH": str(no_espeak), **env})
        assert result.returncode == 1, result.stdout + result.stderr
        # the marked test fails in setup, the fixture's error reaches the test that uses it
        assert "2 errors" in result.stdout and "skipped" not in result.stdout
        assert "espeak-ng is not installed" in result.stdout and "CASPI_REQUIRE_ESPEAK=1" in result.stdout


@pytest.mark.espeak
def test_espeak_tests_run_when_it_is_installed(tmp_path):
    result = run_pytest(tmp_path, {"test_e.py": ESPEAK}, {"CI": "true"})
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout + result.stderr
