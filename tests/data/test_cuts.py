"""The one cut layout: build, write atomically, read back; bad manifests are named."""

import gzip

import numpy as np
import pytest
from lhotse import CutSet

from caspi.data.audio import write_flac
from caspi.data.cuts import cut_domain, cut_text, make_cut, read_manifest, write_manifest
from caspi.errors import DataError


def test_round_trip_keeps_text_domain_and_audio(tmp_path):
    audio = tmp_path / "a.flac"
    write_flac(audio, np.zeros(8000, np.float32))
    cut = make_cut("utt-1", audio, 8000, "שלום עולם.", domain="whatsapp")
    path = write_manifest(CutSet.from_cuts([cut]), tmp_path / "m.jsonl.gz")
    assert not list(tmp_path.glob(".tmp-*"))  # the temp file was renamed away
    back = read_manifest(path)
    (only,) = list(back)
    assert (only.id, only.duration, cut_text(only), cut_domain(only)) == ("utt-1", 0.5, "שלום עולם.", "whatsapp")
    assert only.load_audio().shape == (1, 8000)
    # A speed-perturbed copy keeps transcript and domain.
    fast = only.perturb_speed(1.1)
    assert cut_text(fast) == "שלום עולם." and cut_domain(fast) == "whatsapp"


def test_missing_and_corrupt_manifests(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl.gz")
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"id": "x", "this": "is not a cut"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz: not a readable Lhotse CutSet"):
        read_manifest(bad)


def test_same_cuts_give_identical_bytes(tmp_path):
    cuts = CutSet.from_cuts([make_cut(f"u{i}", tmp_path / f"{i}.flac", 16000, "טקסט", "studio") for i in range(3)])
    a = write_manifest(cuts, tmp_path / "a.jsonl.gz").read_bytes()
    import time

    time.sleep(1.1)  # gzip headers carry a timestamp in seconds unless it is pinned
    b = write_manifest(cuts, tmp_path / "b.jsonl.gz").read_bytes()
    assert a == b
    plain = write_manifest(cuts, tmp_path / "c.jsonl")
    assert [c.id for c in read_manifest(plain)] == ["u0", "u1", "u2"]
    assert "טקסט" in plain.read_text(encoding="utf-8")  # readable Hebrew, not \u escapes
