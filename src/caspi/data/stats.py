"""`caspi stats`: a mergeable statistics object over manifests, rendered separately (STYLE.md habit 4).

`ManifestStats` keeps, per domain, every cut's duration and characters per second, so that percentiles of a
`combine()` of shards are exactly those of one `accumulate()` over the union. Lists are fine at our sizes: two
floats per cut, ~1.6 MB of memory per 100k cuts (a quantile sketch such as t-digest would be the next step for
corpora of tens of millions of cuts). `summary()` / `to_json()` give plain numbers; `render_table()` formats them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from caspi.data.cuts import cut_domain, cut_text, read_manifest
from caspi.data.text import for_training

PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class DomainSamples:
    """The raw material of one domain's statistics; merging two is concatenation."""

    durations: list[float] = field(default_factory=list)  # seconds, one per cut
    cps: list[float] = field(default_factory=list)  # characters/second of for_training text; non-empty only
    characters: int = 0  # total characters of for_training text
    empty_transcripts: int = 0  # cuts whose for_training text is empty

    def merged(self, other: DomainSamples) -> DomainSamples:
        return DomainSamples(
            self.durations + other.durations,
            self.cps + other.cps,
            self.characters + other.characters,
            self.empty_transcripts + other.empty_transcripts,
        )


@dataclass
class Summary:
    """Plain numbers for one domain (or all of them). Distributions are dicts: min, p5…p95, max, mean."""

    count: int
    hours: float
    duration: dict[str, float | None]  # seconds
    cps: dict[str, float | None]  # characters per second; over non-empty transcripts
    characters: int
    empty_transcripts: int


def _distribution(values: list[float]) -> dict[str, float | None]:
    keys = ["min", *(f"p{q}" for q in PERCENTILES), "max", "mean"]
    if not values:
        return dict.fromkeys(keys)
    arr = np.asarray(values, dtype=np.float64)
    pct = np.percentile(arr, PERCENTILES)  # linear interpolation (numpy's default)
    return {
        "min": float(arr.min()),
        **{f"p{q}": float(v) for q, v in zip(PERCENTILES, pct, strict=True)},
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def _summarise(samples: DomainSamples) -> Summary:
    return Summary(
        count=len(samples.durations),
        hours=float(sum(samples.durations)) / 3600,
        duration=_distribution(samples.durations),
        cps=_distribution(samples.cps),
        characters=samples.characters,
        empty_transcripts=samples.empty_transcripts,
    )


class ManifestStats:
    """Mergeable per-domain statistics of a manifest: `accumulate(cuts)` a shard, `combine(*others)` shards."""

    def __init__(self, domains: dict[str, DomainSamples] | None = None):
        self.domains: dict[str, DomainSamples] = dict(domains or {})

    def accumulate(self, cuts: Iterable) -> ManifestStats:
        """Add cuts (any iterable of Caspi cuts); returns self so that `ManifestStats().accumulate(cuts)` works."""
        for cut in cuts:
            samples = self.domains.setdefault(cut_domain(cut), DomainSamples())
            duration = float(cut.duration)  # seconds
            text = for_training(cut_text(cut))
            samples.durations.append(duration)
            samples.characters += len(text)
            if not text:
                samples.empty_transcripts += 1
            elif duration > 0:
                samples.cps.append(len(text) / duration)
        return self

    def combine(self, *others: ManifestStats) -> ManifestStats:
        """A new object holding self and `others` together (`ManifestStats.combine(a, b, c)` also works)."""
        result = ManifestStats({name: s.merged(DomainSamples()) for name, s in self.domains.items()})  # copies
        for other in others:
            for name, samples in other.domains.items():
                result.domains[name] = result.domains.get(name, DomainSamples()).merged(samples)
        return result

    def overall(self) -> Summary:
        """Numbers over every domain together."""
        merged = DomainSamples()
        for samples in self.domains.values():
            merged = merged.merged(samples)
        return _summarise(merged)

    def per_domain(self) -> dict[str, Summary]:
        """Numbers per domain, in domain-name order."""
        return {name: _summarise(self.domains[name]) for name in sorted(self.domains)}

    def to_json(self) -> dict:
        """A JSON-serialisable dict: the summaries, plus the per-cut samples that `from_json` needs to merge."""
        return {
            "overall": asdict(self.overall()),
            "domains": {name: asdict(s) for name, s in self.per_domain().items()},
            "samples": {name: asdict(self.domains[name]) for name in sorted(self.domains)},
        }

    @classmethod
    def from_json(cls, data: dict | str) -> ManifestStats:
        """Rebuild from `to_json()`'s dict (or its JSON text)."""
        if isinstance(data, str):
            data = json.loads(data)
        return cls({name: DomainSamples(**s) for name, s in data["samples"].items()})


def stats_for_manifest(path: str | Path) -> ManifestStats:
    """Statistics of one manifest file (`DataError` if it is missing or unreadable)."""
    return ManifestStats().accumulate(read_manifest(path))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(stats: ManifestStats) -> str:
    """A fixed-width console table: one row per domain and one for all domains."""
    header = (
        "domain", "clips", "hours", "dur min", "p5", "p50", "p95", "max", "mean", "cps p5", "p50", "p95", "empty",
    )  # fmt: skip
    rows = [header]
    summaries = [*stats.per_domain().items(), ("all", stats.overall())]
    for name, s in summaries:
        d, c = s.duration, s.cps
        rows.append(
            (
                name,
                str(s.count),
                f"{s.hours:.2f}",
                *(_fmt(d[k]) for k in ("min", "p5", "p50", "p95", "max", "mean")),
                *(_fmt(c[k]) for k in ("p5", "p50", "p95")),
                str(s.empty_transcripts),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n  durations in seconds; cps = characters per second of the training text form"
