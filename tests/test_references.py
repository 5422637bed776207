"""The package's docstrings, the README and the benchmarks cite tests and benchmarks by path
(`tests/train/test_kill_resume.py`, `tests/x.py::test_name`, `benchmarks/bench_scoring.py`): every cited file and test
function must exist, so a rename cannot leave a reader following a dead reference."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"\b((?:tests|benchmarks)/[\w/]+\.py)(?:::(\w+))?")


def cited_places() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md"))]
    for folder in ("src", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def dead_references(text: str) -> list[str]:
    dead = []
    for match in CITATION.finditer(text):
        path, test = ROOT / match.group(1), match.group(2)
        if not path.is_file():
            dead.append(match.group(0))
        elif test and not re.search(rf"^\s*def {test}\b", path.read_text(encoding="utf-8"), re.MULTILINE):
            dead.append(match.group(0))
    return dead


def test_every_cited_test_and_benchmark_exists():
    dead = {f"{place.relative_to(ROOT)}: {ref}" for place in cited_places()
            for ref in dead_references(place.read_text(encoding="utf-8"))}
    assert not dead, "\n".join(sorted(dead))


def test_a_dead_reference_is_found():
    assert dead_references("see tests/eval/test_nothing_here.py and tests/test_references.py::test_gone") == [
        "tests/eval/test_nothing_here.py", "tests/test_references.py::test_gone"]
    assert dead_references("tests/test_references.py::test_a_dead_reference_is_found") == []
