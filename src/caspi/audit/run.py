"""Phase 0, end to end: stratified sample → measure (cached) → flag → decide → report + cleaned manifest.

    result = audit("data/train.jsonl.gz", "phase0", recipe.audit)
    result.decision, result.report_path, result.cleaned_path

Outputs in DIR:
    scores.jsonl            every measurement as it is made, one line per (sample, scorer): an interrupted audit
                            resumes where it stopped, and a re-run with other thresholds recomputes nothing
    alignment_report.json   the decision and the evidence (see `build_report`)
    cleaned.jsonl.gz        the manifest minus every flagged sample: what training reads

Audio is decoded in worker processes (`audit.workers`) a chunk at a time; the audio scorers run batched on each
chunk in this process.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caspi.audit.gate import PROCEED, STOP, decide, file_sha256, wilson_interval
from caspi.audit.scorers import AuditSample, Scorer, build_scorers
from caspi.data.cuts import cut_domain, cut_text, load_cut_audio, read_manifest, write_manifest
from caspi.errors import AudioError, DataError

REPORT_FILE, CLEANED_FILE, SCORES_FILE = "alignment_report.json", "cleaned.jsonl.gz", "scores.jsonl"
CHUNK = 256  # samples decoded and scored together (bounded memory; the cache is written after each chunk)
LENGTH_REASONS = {"rate_low", "rate_high", "text_exceeds_speech", "speech_exceeds_text"}
SEED_MIX = {"noisy": 0.4, "clean": 0.4, "long_tail": 0.2}  # seed 001's stratification by domain kind


@dataclass
class AuditResult:
    decision: str
    low_quality_percentage: float
    report: dict
    report_path: Path
    cleaned_path: Path
    measured: int  # sample × scorer measurements computed in this run (the rest came from the cache)


# ---------------------------------------------------------------------------------------------------- sampling


def _seed_mix_groups(domains: list[str]) -> dict[str, str] | None:
    """domain → "noisy" / "clean" / "long_tail" when every domain name says which it is, else None."""
    groups = {}
    for d in domains:
        kind = next((k for k in ("noisy", "clean", "long_tail") if k in d.lower().replace("-", "_")), None)
        if kind is None:
            return None
        groups[d] = kind
    return groups


def stratified_sample(cuts: list, fraction: float, seed: int, domain_shares: dict[str, float] | None = None) -> list:
    """A deterministic sample of about `fraction` of the cuts, stratified by domain.

    Shares: `domain_shares` ({domain or "*": share}, normalised to 1), else seed 001's 40 % noisy / 40 % clean /
    20 % long tail when every domain is named so, else proportional (each domain contributes `fraction` of its
    cuts). Within a group the sample is a seeded random choice; a group never gives more cuts than it has.
    """
    by_domain: dict[str, list] = defaultdict(list)
    for cut in cuts:
        by_domain[cut_domain(cut)].append(cut)
    total = max(1, round(fraction * len(cuts)))
    mix = _seed_mix_groups(list(by_domain)) if domain_shares is None else None
    if domain_shares is not None:
        unknown = sorted(set(domain_shares) - set(by_domain) - {"*"})
        if unknown:
            raise DataError(f"audit.domain_shares names domains the manifest does not have: {', '.join(unknown)}; "
                            f"it has {', '.join(sorted(by_domain))}")
        groups = {d: d if d in domain_shares else "*" for d in by_domain}
        shares = dict(domain_shares)
    elif mix is not None:
        groups, shares = mix, dict(SEED_MIX)
    else:
        groups = {d: d for d in by_domain}
        shares = {d: len(v) / len(cuts) for d, v in by_domain.items()}
    members: dict[str, list] = defaultdict(list)
    for domain in sorted(by_domain):
        members[groups[domain]].extend(sorted(by_domain[domain], key=lambda c: c.id))
    present = {g: s for g, s in shares.items() if members.get(g)}
    norm = sum(present.values())
    rng = random.Random(seed)
    chosen = []
    for group in sorted(present):
        want = min(len(members[group]), max(1, round(total * present[group] / norm)))
        chosen.extend(rng.sample(members[group], want))
    return sorted(chosen, key=lambda c: c.id)


# ---------------------------------------------------------------------------------------------------- decoding


def _decode(cut_dict: dict) -> tuple[str, np.ndarray | None, str | None]:
    """Worker: (id, 16 kHz mono float32 samples or None, error or None)."""
    from lhotse import CutSet

    cut = CutSet.from_dicts([cut_dict])[0]
    try:
        return cut.id, load_cut_audio(cut), None
    except AudioError as exc:
        return cut.id, None, str(exc)[:300]


# ---------------------------------------------------------------------------------------------------- the audit


def audit(manifest: str | Path, out_dir: str | Path, config, *, all_samples: bool = False, progress: bool = True,
          scorers: list[Scorer] | None = None) -> AuditResult:
    """Run the Phase 0 audit of `manifest` into `out_dir` with the recipe's `audit` section (`config`)."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = list(read_manifest(manifest))
    if not cuts:
        raise DataError(f"{manifest}: the manifest holds no cuts")
    scorers = scorers if scorers is not None else build_scorers(config.scorers)
    sample = cuts if all_samples else stratified_sample(cuts, config.sample_fraction, config.seed,
                                                       config.domain_shares)
    samples = [AuditSample(c.id, cut_domain(c), cut_text(c), float(c.duration)) for c in sample]

    cache = ScoreCache(out_dir / SCORES_FILE)
    measured = _measure(sample, samples, scorers, cache, config.workers, progress)
    reasons = _flag(samples, scorers, cache)

    flagged_ids = {s.id for s in samples if reasons[s.id]}
    cleaned = [c for c in cuts if c.id not in flagged_ids]
    from lhotse import CutSet

    cleaned_path = write_manifest(CutSet.from_cuts(cleaned), out_dir / CLEANED_FILE)
    report = build_report(samples, scorers, cache, reasons, config, manifest=manifest, cleaned_path=cleaned_path,
                          all_samples=all_samples, total_in_manifest=len(cuts))
    report_path = out_dir / REPORT_FILE
    tmp = report_path.with_name(f".tmp-{report_path.name}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(report_path)
    return AuditResult(report["decision"], report["low_quality_percentage"], report, report_path, cleaned_path,
                       measured)


class ScoreCache:
    """DIR/scores.jsonl: {"id", "scorer", "version" (the scorer's cache key), "values"} per line, appended as
    measurements are made;
    `scorer` "audio" records a sample whose audio could not be decoded."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[tuple[str, str, str], dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.values[(record["id"], record["scorer"], record["version"])] = record["values"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill: that measurement is simply made again

    def get(self, sample_id: str, scorer: Scorer) -> dict | None:
        return self.values.get((sample_id, scorer.name, scorer.cache_key))

    def unreadable(self, sample_id: str) -> str | None:
        value = self.values.get((sample_id, "audio", "1"))
        return value["error"] if value else None

    def add(self, records: list[tuple[str, str, str, dict]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for sample_id, scorer, version, values in records:
                self.values[(sample_id, scorer, version)] = values
                f.write(json.dumps({"id": sample_id, "scorer": scorer, "version": version, "values": values},
                                   ensure_ascii=False) + "\n")
            f.flush()


def _measure(cuts: list, samples: list[AuditSample], scorers: list[Scorer], cache: ScoreCache, workers: int,
             progress: bool) -> int:
    """Fill the cache with every missing (sample, scorer) measurement; returns how many were made."""
    made = 0
    text_scorers = [s for s in scorers if not s.needs_audio]
    audio_scorers = [s for s in scorers if s.needs_audio]
    for scorer in text_scorers:
        todo = [s for s in samples if cache.get(s.id, scorer) is None]
        if todo:
            cache.add([(s.id, scorer.name, scorer.cache_key, m) for s, m in zip(todo, scorer.measure(todo))])
            made += len(todo)
    todo_idx = [i for i, s in enumerate(samples)
                if cache.unreadable(s.id) is None and any(cache.get(s.id, sc) is None for sc in audio_scorers)]
    if not todo_idx:
        return made
    from tqdm import tqdm

    bar = tqdm(total=len(todo_idx), desc="audit", unit="clip", disable=not progress, file=sys.stderr)
    context = mp.get_context("spawn")  # no fork after torch threads exist
    pool = context.Pool(workers) if workers > 1 else None
    try:
        for start in range(0, len(todo_idx), CHUNK):
            chunk = todo_idx[start:start + CHUNK]
            dicts = [cuts[i].to_dict() for i in chunk]
            decoded = pool.map(_decode, dicts) if pool is not None else [_decode(d) for d in dicts]
            records, readable = [], []
            for i, (cut_id, audio, error) in zip(chunk, decoded):
                if error is not None:
                    records.append((cut_id, "audio", "1", {"error": error}))
                else:
                    samples[i].audio = audio
                    readable.append(samples[i])
            for scorer in audio_scorers:
                todo = [s for s in readable if cache.get(s.id, scorer) is None]
                if todo:
                    records += [(s.id, scorer.name, scorer.cache_key, m) for s, m in zip(todo, scorer.measure(todo))]
                    made += len(todo)
            cache.add(records)
            for s in readable:
                s.audio = None  # free the chunk's audio
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return made


def _flag(samples: list[AuditSample], scorers: list[Scorer], cache: ScoreCache) -> dict[str, list[str]]:
    """Every sample's reasons: `unreadable`, or those of each scorer over the readable samples."""
    reasons: dict[str, list[str]] = {s.id: [] for s in samples}
    readable = []
    for s in samples:
        if cache.unreadable(s.id) is not None:
            reasons[s.id].append("unreadable")
        else:
            readable.append(s)
    for scorer in scorers:
        measures = [cache.get(s.id, scorer) for s in readable]
        assert all(m is not None for m in measures), f"{scorer.name}: missing measurements"
        for s, r in zip(readable, scorer.flag(readable, measures)):
            reasons[s.id].extend(r)
    return reasons


# ---------------------------------------------------------------------------------------------------- the report


def _percentiles(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {k: None for k in ("p10", "p25", "p50", "p75", "p90", "mean")}
    p = np.percentile(arr, [10, 25, 50, 75, 90])
    return {"p10": p[0], "p25": p[1], "p50": p[2], "p75": p[3], "p90": p[4], "mean": float(arr.mean())}


def _coverage(sample_id: str, scorers: list[Scorer], cache: ScoreCache) -> tuple[float | None, str | None]:
    """A sample's coverage: the CTC alignment's share of aligned characters if that scorer ran, else the VAD's
    share of the clip that is speech; None for an unreadable sample."""
    names = {s.name: s for s in scorers}
    for name, key in (("ctc", "coverage"), ("vad", "speech_coverage")):
        if name in names:
            m = cache.get(sample_id, names[name])
            return (m[key] if m is not None else None), name
    return None, None


def build_report(samples, scorers, cache, reasons, config, *, manifest: Path, cleaned_path: Path,
                 all_samples: bool, total_in_manifest: int) -> dict:
    n = len(samples)
    low = [s for s in samples if reasons[s.id]]
    pct = 100.0 * len(low) / n
    lo, hi = wilson_interval(len(low), n)
    coverages = {s.id: _coverage(s.id, scorers, cache) for s in samples}
    source = next((src for _, src in coverages.values() if src), None)
    domains = {}
    for domain in sorted({s.domain for s in samples}):
        rows = [s for s in samples if s.domain == domain]
        cov = [coverages[s.id][0] for s in rows if coverages[s.id][0] is not None]
        domains[domain] = {
            "samples": len(rows),
            "low_quality_samples": sum(bool(reasons[s.id]) for s in rows),
            "low_quality_percentage": 100.0 * sum(bool(reasons[s.id]) for s in rows) / len(rows),
            "mean_coverage": float(np.mean(cov)) if cov else None,
            "length_mismatch_percentage": 100.0 * sum(bool(LENGTH_REASONS & set(reasons[s.id])) for s in rows)
            / len(rows),
        }
    flagged = []
    for s in low:
        entry = {"id": s.id, "domain": s.domain, "reasons": reasons[s.id]}
        error = cache.unreadable(s.id)
        if error:
            entry["error"] = error
        for scorer in scorers:
            m = cache.get(s.id, scorer)
            if m is not None:
                entry[scorer.name] = m
        flagged.append(entry)
    from caspi import __version__

    return {
        "decision": decide(pct, config.proceed_below, config.stop_above),
        "low_quality_percentage": pct,
        "low_quality_ci95": [100.0 * lo, 100.0 * hi],
        "total_samples": n,
        "low_quality_samples": len(low),
        "coverage": {**_percentiles([c for c, _ in coverages.values()]), "source": source},
        "domain_statistics": domains,
        "reasons": dict(Counter(r for s in low for r in reasons[s.id]).most_common()),
        "flagged": flagged,
        "scorers": [s.describe() for s in scorers],
        "thresholds": {"proceed_below": config.proceed_below, "stop_above": config.stop_above},
        "sampling": {"all": all_samples, "fraction": 1.0 if all_samples else config.sample_fraction,
                     "seed": config.seed, "domain_shares": config.domain_shares,
                     "manifest_samples": total_in_manifest},
        "manifest": str(manifest),
        "manifest_sha256": file_sha256(manifest),
        "cleaned_manifest": str(cleaned_path),
        "cleaned_manifest_sha256": file_sha256(cleaned_path),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "caspi": __version__,
    }


def render_summary(report: dict) -> str:
    """The console summary (seed 001's layout): totals, coverage percentiles, per domain, the decision in words."""
    line = "=" * 70
    cov = report["coverage"]
    out = [line, "PHASE 0 AUDIT RESULTS", line, "",
           f"Total samples audited: {report['total_samples']:,}",
           f"Low quality samples: {report['low_quality_samples']:,} ({report['low_quality_percentage']:.1f}%, "
           f"95% CI {report['low_quality_ci95'][0]:.1f}–{report['low_quality_ci95'][1]:.1f}%)", ""]
    if cov["mean"] is not None:
        out.append(f"Coverage distribution ({cov['source']}):")
        out += [f"  {k}: {cov[k]:.3f}" for k in ("p10", "p25", "p50", "p75", "p90", "mean")]
        out.append("")
    if report["reasons"]:
        out.append("Reasons: " + ", ".join(f"{k} {v}" for k, v in report["reasons"].items()))
        out.append("")
    out.append("Per-domain breakdown:")
    for domain, d in report["domain_statistics"].items():
        mean_cov = f"{d['mean_coverage']:.3f}" if d["mean_coverage"] is not None else "-"
        out += ["", f"  {domain}:", f"    Samples: {d['samples']:,}",
                f"    Low quality: {d['low_quality_percentage']:.1f}%", f"    Mean coverage: {mean_cov}",
                f"    Length mismatches: {d['length_mismatch_percentage']:.1f}%"]
    decision, pct = report["decision"], report["low_quality_percentage"]
    t = report["thresholds"]
    words = {
        PROCEED: f"PROCEED: {pct:.1f}% of samples are low quality (below {t['proceed_below']:g}%). The data is fit "
                 "for training.",
        STOP: f"STOP: {pct:.1f}% of samples are low quality (above {t['stop_above']:g}%). Fix the data before "
              "training; `caspi train` refuses this report unless --force-gate.",
    }.get(decision, f"CAUTION: {pct:.1f}% of samples are low quality (between {t['proceed_below']:g}% and "
                    f"{t['stop_above']:g}%). Training may proceed on the cleaned manifest; watch the eval closely.")
    out += ["", line, "DECISION GATE", line, "", words, ""]
    return "\n".join(out)
