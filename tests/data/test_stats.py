"""`ManifestStats`: hand-checked numbers, exact merges, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lhotse import CutSet

from caspi.data.cuts import write_manifest
from caspi.data.stats import ManifestStats, render_table, stats_for_manifest
from caspi.testing import metadata_cut


@pytest.fixture
def cuts() -> list:
    return [
        metadata_cut("a1", 1.0, "אב", "studio"),  # 2 chars / 1 s
        metadata_cut("a2", 2.0, "שָׁלוֹם", "studio"),  # niqqud removed by for_training: 4 chars / 2 s
        metadata_cut("a3", 3.0, "אבגדה ו", "studio"),  # 7 chars (space counts) / 3 s
        metadata_cut("a4", 4.0, "א" * 12, "studio"),  # 12 chars / 4 s
        metadata_cut("b1", 10.0, "ֳ", "phone"),  # only a niqqud mark: empty once normalised
        metadata_cut("b2", 5.0, "אבגדהוזחטי", "phone"),  # 10 chars / 5 s
    ]


def test_numbers_on_a_hand_made_cutset(cuts):
    stats = ManifestStats().accumulate(cuts)

    studio = stats.per_domain()["studio"]
    assert studio.count == 4
    assert studio.hours == pytest.approx(10.0 / 3600)
    assert studio.duration["min"] == 1.0 and studio.duration["max"] == 4.0
    assert studio.duration["mean"] == pytest.approx(2.5)
    assert studio.duration["p50"] == pytest.approx(2.5)
    assert studio.duration["p5"] == pytest.approx(1.15)  # linear: 1 + 0.05 * 3 * (2 - 1)
    assert studio.duration["p75"] == pytest.approx(3.25)
    assert studio.cps["min"] == pytest.approx(2.0)  # 2/1 = 2, 4/2 = 2, 7/3, 12/4 = 3
    assert studio.cps["max"] == pytest.approx(3.0)
    assert studio.cps["mean"] == pytest.approx((2 + 2 + 7 / 3 + 3) / 4)
    assert studio.characters == 2 + 4 + 7 + 12
    assert studio.empty_transcripts == 0

    phone = stats.per_domain()["phone"]
    assert (phone.count, phone.empty_transcripts, phone.characters) == (2, 1, 10)
    assert phone.cps["p50"] == pytest.approx(2.0)  # only b2 has text: 10 chars / 5 s

    overall = stats.overall()
    assert overall.count == 6 and overall.empty_transcripts == 1
    assert overall.hours == pytest.approx(25.0 / 3600)
    assert overall.duration["p50"] == pytest.approx(3.5)  # median of 1, 2, 3, 4, 5, 10
    assert overall.duration["p95"] == pytest.approx(8.75)  # 5 + 0.75 * (10 - 5)


def test_empty_stats_have_no_distribution():
    overall = ManifestStats().overall()
    assert overall.count == 0 and overall.duration["p50"] is None and overall.cps["mean"] is None
    assert "all" in render_table(ManifestStats())


def test_combine_equals_accumulate_over_the_union(cuts):
    whole = ManifestStats().accumulate(cuts)
    a = ManifestStats().accumulate(cuts[:2])
    b = ManifestStats().accumulate(cuts[2:5])
    c = ManifestStats().accumulate(cuts[5:])

    merged = a.combine(b, c)

    assert merged.per_domain().keys() == whole.per_domain().keys()
    for name, summary in [*whole.per_domain().items(), ("all", whole.overall())]:
        got = merged.overall() if name == "all" else merged.per_domain()[name]
        assert got.hours == pytest.approx(summary.hours) and got.characters == summary.characters
        assert got.count == summary.count and got.empty_transcripts == summary.empty_transcripts
        assert got.duration == pytest.approx(summary.duration)
        assert got.cps == pytest.approx(summary.cps)
    assert a.overall().count == 2  # combine() does not modify its inputs
    merged.accumulate([metadata_cut("x", 1.0, "א", "studio")])
    assert a.overall().count == 2 and b.overall().count == 3


def test_json_round_trip_and_merge_after_reload(cuts):
    a = ManifestStats().accumulate(cuts[:3])
    b = ManifestStats().accumulate(cuts[3:])
    text = json.dumps(a.to_json(), ensure_ascii=False)

    reloaded = ManifestStats.from_json(text)

    assert reloaded.to_json() == a.to_json()
    combined = reloaded.combine(b).overall()
    assert combined.duration["p25"] == pytest.approx(np.percentile([1, 2, 3, 4, 10, 5], 25))


def test_stats_for_manifest_and_table(cuts, tmp_path):
    path = write_manifest(CutSet.from_cuts(cuts), tmp_path / "m.jsonl.gz")

    stats = stats_for_manifest(path)

    assert stats.overall().count == 6
    table = render_table(stats)
    assert [line.split()[0] for line in table.splitlines()[2:4]] == ["phone", "studio"]
