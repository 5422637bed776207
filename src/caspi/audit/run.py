"""Phase 0, end to end: stratified sample → measure (cached) → flag → decide → report; then clean: score every
sample with the cheap scorers → cleaned manifest.

    result = audit("data/train.jsonl.gz", "phase0", recipe.audit)
    result.decision, result.report_path, result.cleaned_path

The decision rests on the (stratified) sample, scored by every enabled scorer. A manifest is called cleaned only
if every sample in it was scored: with `audit.clean: all` (the default) every sample of the manifest is scored by
the cheap, model-free scorers (text, rate, vad; the rate's domain statistics then come from the whole manifest)
and every flagged sample is removed, as well as those the model scorers (ctc, asr, loss, qwen3_aligner) flagged in
the sample; those score every sample only when the whole manifest is audited (`--all`, or `sample_fraction: 1`).
With `audit.clean: none` no cleaned manifest is written and the report says so. A model scorer that says what it
can see (`loss`) adds per domain whether it vouches for it, in `domain_statistics` and `visibility`.

Outputs in DIR:
    scores.jsonl            every measurement as it is made, one line per (sample, scorer), keyed by what it measured
                            (`ScoreCache`): an interrupted audit resumes where it stopped, a re-run with other
                            thresholds recomputes nothing, and a changed transcript, audio file or model is
                            measured again
    alignment_report.json   the decision and the evidence (see `build_report`), and how the cleaning was done
    cleaned.jsonl.gz        the manifest minus every flagged sample: what training reads (`audit.clean: all`)
    removed.jsonl           the samples cleaning removed, with their reasons

Audio is decoded in worker processes (`audit.workers`) a chunk at a time; the audio scorers run batched on each
chunk in this process.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caspi import __version__
from caspi.audit.gate import PROCEED, STOP, Stratum, decide, stratified_share
from caspi.audit.scorers import AuditSample, Scorer, build_scorers, is_hard
from caspi.data.cuts import (
    cut_domain,
    cut_text,
    file_sha256,
    load_cut_audio,
    read_manifest,
    write_jsonl,
    write_manifest,
    write_text_atomic,
)
from caspi.errors import AudioError, DataError
from caspi.progress import progress as show_progress

REPORT_FILE, CLEANED_FILE, SCORES_FILE = "alignment_report.json", "cleaned.jsonl.gz", "scores.jsonl"
REMOVED_FILE = "removed.jsonl"  # what cleaning took out: id, domain, reasons
CHUNK = 256  # samples decoded and scored together (bounded memory; the cache is written after each chunk)
LENGTH_REASONS = {"rate_low", "rate_high", "text_exceeds_speech", "speech_exceeds_text"}
SEED_MIX = {"noisy": 0.4, "clean": 0.4, "long_tail": 0.2}  # seed 001's stratification by domain kind


@dataclass
class AuditResult:
    decision: str
    low_quality_percentage: float
    report: dict
    report_path: Path
    cleaned_path: Path | None  # None with `audit.clean: none`
    measured: int  # sample × scorer measurements computed in this run (the rest came from the cache)
    measured_pairs: list[tuple[str, str]] = field(default_factory=list)  # those measurements: (sample id, scorer)


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
    chosen = cuts if all_samples else stratified_sample(cuts, config.sample_fraction, config.seed,
                                                       config.domain_shares)
    stats: dict[str, list[int] | None] = {}  # audio path → [bytes, mtime ns, ctime ns]: stat'ed once
    samples = _audit_samples(chosen, stats)

    cache = ScoreCache(out_dir / SCORES_FILE)
    with _Decoder(config.workers) as decoder:
        measured = _measure(chosen, samples, scorers, cache, decoder, progress, "audit (decision sample)")
        reasons = _flag(samples, scorers, cache)
        cleaned_path, cleaning, more = _clean(cuts, samples, reasons, scorers, cache, config, out_dir, stats, decoder,
                                              progress)
    measured += more
    cache.bind(samples)  # the report reads the decision sample's measurements
    extra = {
        "decision_sample": {"scored_samples": len(samples), "scorers": [s.name for s in scorers]},
        "cleaning": cleaning,
        "measurements_made": len(measured),
    }
    report = build_report(samples, scorers, cache, reasons, config, manifest=manifest, cleaned_path=cleaned_path,
                          all_samples=all_samples, total_in_manifest=len(cuts),
                          population=Counter(cut_domain(c) for c in cuts), extra=extra)
    report_path = write_text_atomic(out_dir / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False))
    return AuditResult(report["decision"], report["low_quality_percentage"], report, report_path, cleaned_path,
                       len(measured), measured)


def _clean(cuts: list, samples: list[AuditSample], reasons: dict[str, list[str]], scorers: list[Scorer],
           cache: ScoreCache, config, out_dir: Path, stats: dict, decoder: _Decoder, progress: bool
           ) -> tuple[Path | None, dict, list[tuple[str, str]]]:
    """Write the cleaned manifest (every sample scored, every flagged one removed) and `removed.jsonl`, or with
    `audit.clean: none` neither; returns (cleaned manifest or None, the report's `cleaning` section, the
    measurements made)."""
    cleaned_file, removed_file = out_dir / CLEANED_FILE, out_dir / REMOVED_FILE
    cheap = [s for s in scorers if s.cheap]
    whole = len(samples) == len(cuts)  # the decision sample is the manifest: every scorer scored every sample
    why_not = None
    if config.clean == "none":
        why_not = "audit.clean is none"
    elif not whole and not cheap:
        why_not = ("no cheap scorer (text, rate, vad) is enabled to score the samples outside the decision sample; "
                   "audit the whole manifest (--all) to clean with the model scorers")
    if why_not is not None:
        # A cleaned manifest left by an earlier audit in this folder is no longer vouched for by the report.
        for stale in (cleaned_file, removed_file):
            stale.unlink(missing_ok=True)
        return None, {"mode": "none", "scored_samples": 0, "scorers": [], "removed_samples": 0,
                      "note": f"no cleaned manifest written ({why_not}); only the audited manifest passes the "
                              "gate"}, []
    made: list[tuple[str, str]] = []
    if whole:
        clean_reasons, clean_scorers, sample_only = reasons, scorers, []
    else:
        everyone = _audit_samples(cuts, stats)
        made = _measure(cuts, everyone, cheap, cache, decoder, progress, "audit (cleaning: every sample)")
        # Flagged over the whole manifest: the rate's domain median and MAD come from every sample of the domain.
        clean_reasons, clean_scorers = _flag(everyone, cheap, cache), cheap
        sample_only = [s for s in scorers if not s.cheap]
        if sample_only:  # what the model scorers found in the decision sample goes too
            for sample_id, rs in _flag(samples, sample_only, cache).items():
                clean_reasons[sample_id] += [r for r in rs if r not in clean_reasons[sample_id]]
    removed = [c for c in cuts if clean_reasons[c.id]]
    removed_ids = {c.id for c in removed}
    from lhotse import CutSet

    cleaned_path = write_manifest(CutSet.from_cuts([c for c in cuts if c.id not in removed_ids]), cleaned_file)
    write_jsonl(({"id": c.id, "domain": cut_domain(c), "reasons": clean_reasons[c.id]} for c in removed), removed_file)
    return cleaned_path, {
        "mode": "all",
        "scored_samples": len(cuts),
        "scorers": [s.name for s in clean_scorers],
        "decision_sample_only_scorers": [s.name for s in sample_only],
        "removed_samples": len(removed),
        "kept_samples": len(cuts) - len(removed),
        "reasons": dict(Counter(r for c in removed for r in clean_reasons[c.id]).most_common()),
        "removed_list": str(removed_file),
    }, made


class ScoreCache:
    """DIR/scores.jsonl, one line per measurement, appended as measurements are made:

        {"id", "scorer", "version": the scorer's `cache_key` (version + measurement settings),
         "model": the scoring model's content identity (`Scorer.model_identity`; null for model-free scorers),
         "input": a digest of what it read of the sample (`Scorer.input_key`: transcript, manifest duration, audio
                  identity), "values"}

    A measurement is reused only when all of these match the sample as it is now (`bind`), so an edited transcript,
    replaced audio or another (or a further trained) model is measured again; stale lines stay in the file, unused.

    Audio that cannot be decoded is kept for this run only (`unreadable`), never cached: a decoding failure costs
    milliseconds, and its cause (a mount that was offline, a missing codec, a file still being copied) can go away
    without any change the audio identity would see, so it is retried on every run.
    """

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[tuple, dict] = {}
        self.samples: dict[str, AuditSample] = {}  # sample id → the sample as it is in this run's manifest
        self.errors: dict[str, str] = {}  # sample id → why its audio could not be decoded (this run)
        self._inputs: dict[str, dict[str, str]] = {}  # sample id → scorer name → input digest (memo)
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                    self.values[(r["id"], r["scorer"], r["version"], r["model"], r["input"])] = r["values"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill, or from a cache without input keys: measured again

    def bind(self, samples: list[AuditSample]) -> None:
        """Make `samples` the current contents of their ids (what `get` matches cached measurements against)."""
        for s in samples:
            if self.samples.get(s.id) is not s:
                self.samples[s.id] = s
                self._inputs.pop(s.id, None)

    def _key(self, sample_id: str, scorer: Scorer) -> tuple:
        inputs = self._inputs.setdefault(sample_id, {})
        if scorer.name not in inputs:
            inputs[scorer.name] = scorer.input_key(self.samples[sample_id])
        return sample_id, scorer.name, scorer.cache_key, scorer.model_identity, inputs[scorer.name]

    def get(self, sample_id: str, scorer: Scorer) -> dict | None:
        return self.values.get(self._key(sample_id, scorer))

    def unreadable(self, sample_id: str) -> str | None:
        return self.errors.get(sample_id)

    def add(self, scorer: Scorer, samples: list[AuditSample], measures: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for s, values in zip(samples, measures, strict=True):
                key = self._key(s.id, scorer)
                self.values[key] = values
                record = dict(zip(("id", "scorer", "version", "model", "input"), key), values=values)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()


def audio_identity(cut, stats: dict[str, list[int] | None]) -> str:
    """What a cut's audio is, for the measurement cache (JSON): each source of its recording (type, path or URL,
    channels; a file's size in bytes, mtime and ctime in ns; a sha256 of in-memory bytes), the recording's sampling
    rate and transforms (speed perturbation, resampling), and the cut's offset, duration and channel.

    Reading every file's bytes would cost as much as decoding it, so a file is known by its stat: a file replaced in
    place or renamed over changes its ctime even when `cp -p`, `rsync -t` or `tar` carry the old mtime over (a
    chmod does too: measured again, which is safe). A missing file reads as `stat: null`, so its measurements are
    not reused either. `stats` memoises each path's stat (many cuts may share one long recording)."""
    recording = getattr(cut, "recording", None)
    if recording is None:
        return json.dumps({"cut": cut.to_dict()}, sort_keys=True, default=str)
    sources = []
    for src in recording.sources:
        entry = {"type": src.type, "channels": src.channels}
        if src.type == "file":
            path = str(src.source)
            if path not in stats:
                try:
                    st = os.stat(path)
                    stats[path] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                except OSError:
                    stats[path] = None
            entry.update(source=path, stat=stats[path])
        elif isinstance(src.source, bytes):
            entry["sha256"] = hashlib.sha256(src.source).hexdigest()
        else:
            entry["source"] = str(src.source)
        sources.append(entry)
    return json.dumps({"sources": sources, "sampling_rate": recording.sampling_rate,
                       "transforms": recording.transforms, "start": cut.start, "duration": cut.duration,
                       "channel": cut.channel}, sort_keys=True, default=str)


def _audit_samples(cuts: list, stats: dict[str, list[int] | None]) -> list[AuditSample]:
    return [AuditSample(c.id, cut_domain(c), cut_text(c), float(c.duration), audio_identity=audio_identity(c, stats))
            for c in cuts]


class _Decoder:
    """Decodes cuts' audio (`_decode`) in `workers` spawned processes, started on first use and shared by the
    decision and the cleaning passes (each start imports torch in every worker: seconds)."""

    def __init__(self, workers: int):
        self.workers, self.pool = workers, None

    def map(self, cut_dicts: list[dict]) -> list[tuple[str, np.ndarray | None, str | None]]:
        if self.workers <= 1:
            return [_decode(d) for d in cut_dicts]
        if self.pool is None:
            self.pool = mp.get_context("spawn").Pool(self.workers)  # no fork after torch threads exist
        return self.pool.map(_decode, cut_dicts)

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _measure(cuts: list, samples: list[AuditSample], scorers: list[Scorer], cache: ScoreCache, decoder: _Decoder,
             progress: bool, desc: str = "audit") -> list[tuple[str, str]]:
    """Fill the cache with every missing (sample, scorer) measurement; returns the (sample id, scorer name) pairs
    measured in this call (the rest came from the cache)."""
    made: list[tuple[str, str]] = []
    cache.bind(samples)
    text_scorers = [s for s in scorers if not s.needs_audio]
    audio_scorers = [s for s in scorers if s.needs_audio]
    for scorer in text_scorers:
        todo = [s for s in samples if cache.get(s.id, scorer) is None]
        if todo:
            cache.add(scorer, todo, scorer.measure(todo))
            made += [(s.id, scorer.name) for s in todo]
    todo_idx = [i for i, s in enumerate(samples)
                if cache.unreadable(s.id) is None and any(cache.get(s.id, sc) is None for sc in audio_scorers)]
    if not todo_idx:
        return made
    bar = show_progress(len(todo_idx), desc, enabled=progress)
    try:
        for start in range(0, len(todo_idx), CHUNK):
            chunk = todo_idx[start:start + CHUNK]
            decoded = decoder.map([cuts[i].to_dict() for i in chunk])
            readable = []
            for i, (cut_id, audio, error) in zip(chunk, decoded):
                if error is not None:
                    samples[i].error = error
                    cache.errors[cut_id] = error
                else:
                    samples[i].audio = audio
                    readable.append(samples[i])
            for scorer in audio_scorers:
                todo = [s for s in readable if cache.get(s.id, scorer) is None]
                if todo:
                    cache.add(scorer, todo, scorer.measure(todo))
                    made += [(s.id, scorer.name) for s in todo]
            for s in readable:
                s.audio = None  # free the chunk's audio
            bar.update(len(chunk))
    finally:
        bar.close()
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


def build_report(samples, scorers, cache, reasons, config, *, manifest: Path, cleaned_path: Path | None,
                 all_samples: bool, total_in_manifest: int, population: dict[str, int] | None = None,
                 extra: dict | None = None) -> dict:
    """The report. The decision's number (`low_quality_percentage`, `low_quality_ci95`) estimates the share of
    low-quality samples in the manifest:

    - per domain (stratum), a sample counts as low quality when it has a hard reason (unreadable, no speech,
      empty or Latin transcript: counted as is), and soft-only flags (rate / speech-rate outliers, low coverage,
      high CER, high loss) count net of the false alarms the scorers are expected to raise on its clean samples:
          bad_h = hard_h + max(0, soft_h − f_h · (n_h − hard_h)),   f_h = Σ scorers' `false_alarm_rate`
      (rate at |z| > 3: 0.27 %, held at every domain size by the small-sample threshold of `robust_threshold`;
      a model scorer that cannot see domain h, per its `domain_report`, flags nothing there and adds nothing);
    - the domains are weighted by their share of the manifest (`population`, samples per domain; default: the
      sampled counts, i.e. proportional), with a stratified Wilson interval (`caspi.audit.gate.stratified_share`).

    Every flagged sample, hard or soft, still leaves the cleaned manifest. `sample_low_quality_percentage` is the
    plain share of flagged samples in the sample, for reference.
    """
    n = len(samples)
    low = [s for s in samples if reasons[s.id]]
    hard = {s.id for s in low if any(is_hard(r) for r in reasons[s.id])}
    false_alarm_rate = sum(sc.false_alarm_rate for sc in scorers)
    notes: dict[str, dict[str, str]] = defaultdict(dict)  # sample id → reason → the values behind it
    zs: dict[str, dict[str, float]] = defaultdict(dict)  # sample id → reason → the scorer's own z (`flag_scores`)
    sight: dict[str, dict[str, dict]] = {}  # scorer → domain → what it can see there (`Scorer.domain_report`)
    for scorer in scorers:
        rows = [s for s in samples if cache.get(s.id, scorer) is not None]  # the readable samples
        measures = [cache.get(s.id, scorer) for s in rows]
        for s, note, z in zip(rows, scorer.explain(rows, measures), scorer.flag_scores(rows, measures)):
            notes[s.id].update(note)
            zs[s.id].update(z)
        seen = scorer.domain_report(rows, measures)
        if seen:
            sight[scorer.name] = seen

    def domain_false_alarm_rate(domain: str) -> float:
        # A scorer flags nothing in a domain it cannot see, so it raises no false alarms there either.
        return sum(sc.false_alarm_rate for sc in scorers
                   if sight.get(sc.name, {}).get(domain, {}).get("sees", True))

    population = dict(population) if population is not None else dict(Counter(s.domain for s in samples))
    coverages = {s.id: _coverage(s.id, scorers, cache) for s in samples}
    source = next((src for _, src in coverages.values() if src), None)
    domains, strata = {}, []
    for domain in sorted({s.domain for s in samples}):
        rows = [s for s in samples if s.domain == domain]
        cov = [coverages[s.id][0] for s in rows if coverages[s.id][0] is not None]
        n_low = sum(bool(reasons[s.id]) for s in rows)
        n_hard = sum(s.id in hard for s in rows)
        expected = domain_false_alarm_rate(domain) * (len(rows) - n_hard)
        bad = n_hard + max(0.0, (n_low - n_hard) - expected)
        strata.append(Stratum(population.get(domain, len(rows)), len(rows), bad))
        domains[domain] = {
            "population": population.get(domain, len(rows)),
            "samples": len(rows),
            "low_quality_samples": n_low,
            "low_quality_percentage": 100.0 * n_low / len(rows),
            "hard_failures": n_hard,
            "soft_only": n_low - n_hard,
            "expected_false_alarms": expected,
            "estimated_low_quality_percentage": 100.0 * bad / len(rows),
            "mean_coverage": float(np.mean(cov)) if cov else None,
            "length_mismatch_percentage": 100.0 * sum(bool(LENGTH_REASONS & set(reasons[s.id])) for s in rows)
            / len(rows),
        }
    estimate = stratified_share(strata)
    weight_total = sum(st.population for st in strata)
    for d, st in zip(domains.values(), strata):
        d["weight"] = st.population / weight_total
    pct = 100.0 * estimate.share
    lo, hi = estimate.ci95
    for domain, entry in domains.items():
        entry.update({name: seen[domain] for name, seen in sight.items() if domain in seen})
    flagged = []
    for s in low:
        entry = {"id": s.id, "domain": s.domain, "reasons": reasons[s.id]}
        error = cache.unreadable(s.id)
        if error:
            entry["error"] = error
        if notes.get(s.id):
            entry["notes"] = notes[s.id]
        if zs.get(s.id):
            entry["z"] = zs[s.id]
        for scorer in scorers:
            m = cache.get(s.id, scorer)
            if m is not None:
                entry[scorer.name] = m
        flagged.append(entry)
    return {
        "decision": decide(pct, config.proceed_below, config.stop_above),
        "low_quality_percentage": pct,
        "low_quality_ci95": [100.0 * lo, 100.0 * hi],
        "estimate": {
            "method": "post-stratified by domain (manifest shares as weights); hard failures as is, soft-only "
                      "flags net of the scorers' expected false alarms; Wilson interval on the Kish effective "
                      "sample size",
            "design_effect": estimate.design_effect,
            "effective_samples": estimate.effective_samples,
            "soft_false_alarm_rate": false_alarm_rate,
            "expected_false_alarms": sum(d["expected_false_alarms"] for d in domains.values()),
        },
        "sample_low_quality_percentage": 100.0 * len(low) / n,
        "total_samples": n,
        "low_quality_samples": len(low),
        "hard_failure_samples": len(hard),
        "soft_only_samples": len(low) - len(hard),
        "coverage": {**_percentiles([c for c, _ in coverages.values()]), "source": source},
        "domain_statistics": domains,
        # Per model scorer that says so (`Scorer.domain_report`), the domains it can vouch for and those it cannot see.
        "visibility": {name: {"sees": sorted(d for d, e in seen.items() if e["sees"]),
                              "cannot_see": sorted(d for d, e in seen.items() if not e["sees"])}
                       for name, seen in sight.items()},
        "reasons": dict(Counter(r for s in low for r in reasons[s.id]).most_common()),
        "flagged": flagged,
        "scorers": [s.describe() for s in scorers],
        "thresholds": {"proceed_below": config.proceed_below, "stop_above": config.stop_above},
        "sampling": {"all": all_samples, "fraction": 1.0 if all_samples else config.sample_fraction,
                     "seed": config.seed, "domain_shares": config.domain_shares,
                     "manifest_samples": total_in_manifest},
        "manifest": str(manifest),
        "manifest_sha256": file_sha256(manifest),
        "cleaned_manifest": str(cleaned_path) if cleaned_path is not None else None,
        "cleaned_manifest_sha256": file_sha256(cleaned_path) if cleaned_path is not None else None,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "caspi": __version__,
        **(extra or {}),  # the audit's own sections: decision sample, cleaning, measurements made
    }


def render_summary(report: dict) -> str:
    """The console summary (seed 001's layout): totals, coverage percentiles, per domain, the decision in words."""
    line = "=" * 70
    cov = report["coverage"]
    out = [line, "PHASE 0 AUDIT RESULTS", line, "",
           f"Total samples audited: {report['total_samples']:,}",
           f"Flagged samples: {report['low_quality_samples']:,} ({report['sample_low_quality_percentage']:.1f}% of "
           f"the sample; {report['hard_failure_samples']:,} hard failures, {report['soft_only_samples']:,} soft "
           f"outliers only, {report['estimate']['expected_false_alarms']:.1f} false alarms expected)",
           f"Estimated low quality in the manifest: {report['low_quality_percentage']:.1f}% (95% CI "
           f"{report['low_quality_ci95'][0]:.1f}–{report['low_quality_ci95'][1]:.1f}%, weighted by domain)", ""]
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
        out += ["", f"  {domain}:", f"    Samples: {d['samples']:,} of {d['population']:,} (weight {d['weight']:.3f})",
                f"    Low quality: {d['low_quality_percentage']:.1f}% flagged ({d['hard_failures']} hard), "
                f"{d['estimated_low_quality_percentage']:.1f}% estimated", f"    Mean coverage: {mean_cov}",
                f"    Length mismatches: {d['length_mismatch_percentage']:.1f}%"]
        out += [f"    {name} scorer: {d[name]['summary']}" for name in report.get("visibility", {}) if name in d]
    for name, v in report.get("visibility", {}).items():
        out += ["", f"The {name} scorer vouches for: {', '.join(v['sees']) or 'no domain'}."]
        if v["cannot_see"]:
            out.append(f"It cannot see {', '.join(v['cannot_see'])}: the model does not know that sound well enough "
                       "to tell a wrong transcript from a right one there, so it flags nothing in those domains and "
                       "their wrong transcripts count only as far as the other scorers catch them.")
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
