"""The audit on real Hebrew speech (../shared/real-hebrew, read in place): the 17 clean studio clips are not
flagged, and corrupted copies of some of them are (benchmarks/bench_audit_real.py builds both sets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_audit_real", REPO / "benchmarks" / "bench_audit_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clean_real_clips_pass_and_corrupted_copies_are_flagged(real_hebrew_manifest, tmp_path):
    bench = _bench()
    assert bench.REAL == real_hebrew_manifest
    result = bench.run(tmp_path)
    assert result["imported"] == 17
    assert result["clean"]["flagged"] == [] and result["clean"]["decision"] == "PROCEED"
    flagged = {f["id"]: set(f["reasons"]) for f in result["mixed"]["flagged"]}
    kinds = result["kinds"]
    assert set(flagged) <= set(kinds)  # no clean clip flagged next to the corrupted ones either
    expected = {"silence": "no_speech", "truncated_audio": "rate_high", "english_text": "latin_script"}
    for cid, kind in kinds.items():
        if kind in expected:
            assert expected[kind] in flagged.get(cid, set()), (cid, kind, flagged.get(cid))
