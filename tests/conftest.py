"""Shared fixtures: paths to optional real data, small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_HEBREW = REPO.parent / "shared" / "real-hebrew"


@pytest.fixture
def real_hebrew_manifest() -> Path:
    """The 17 real SASpeech recordings (read in place from ../shared; never copied into the repo)."""
    path = REAL_HEBREW / "saspeech" / "manifest.jsonl"
    if not path.is_file():
        pytest.skip(f"real Hebrew recordings not present at {path}")
    return path
