"""The Phase 0 section of the report: the decision with its interval, the per-domain shares, and the flagged samples
ranked, each with its audio, transcript and the reasons with their values ("20.9 chars/s, median of all audited
11.0").

What an audit folder holds (`caspi.audit.run`): alignment_report.json (the decision, domain statistics, and every
flagged sample of the decision sample with each scorer's measurements), removed.jsonl (every sample cleaning took
out: id, domain, reasons), scores.jsonl (every measurement made, keyed by scorer version and model identity) and
the audited manifest's path (relative to where `caspi audit` ran: the folder's commands.jsonl says where that was).

Flagged samples are the union of the report's flagged list and removed.jsonl. Their measurements come from the
report, else from scores.jsonl (the lines of the report's scorers, by cache key and model identity; the last line
of a sample wins). Each numeric measurement is put next to its reference: the median of the sample's domain, or of
everything audited when the domain has fewer than the scorer's `min_domain_samples` (the rule the rate scorer
flags by), with the robust z (`caspi.audit.scorers.robust_z`).

Ranking ("sorted by score"): hard failures first (unreadable, no speech, empty or Latin transcript: facts, not
evidence), then soft flags by their score, the largest |z| behind the sample's reasons: the z the scorer flagged on
where the report holds it (a flagged entry's `z`, `Scorer.flag_scores`: the rate scorer's fit residual, the loss
scorer's upper-tail z), else the robust z of the measurements behind the reason (`REASON_MEASURES`; a reason this
module does not know, such as a new scorer's, is tied to the scorer whose name starts it, e.g. `loss_high` to
`loss`, and to all of that scorer's numbers). Reasons and measurements this module does not know are still shown,
generically.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caspi.audit.run import CLEANED_FILE, REMOVED_FILE, REPORT_FILE, SCORES_FILE
from caspi.audit.scorers import is_hard, robust_z
from caspi.data.audio import write_flac
from caspi.data.cuts import cut_domain, cut_text, file_sha256, load_cut_audio, read_manifest
from caspi.errors import AudioError, DataError
from caspi.report.commands import read_commands
from caspi.report.inputs import read_json

# reason → the (scorer, measurement) it is judged on; the ranking's score is that measurement's robust |z|.
REASON_MEASURES = {
    "rate_low": [("rate", "chars_per_s")],
    "rate_high": [("rate", "chars_per_s")],
    "text_exceeds_speech": [("vad", "chars_per_speech_s")],
    "speech_exceeds_text": [("vad", "chars_per_speech_s")],
    "low_alignment": [("ctc", "coverage")],
    "asr_mismatch": [("asr", "cer")],
    "aligner_low_coverage": [("qwen3_aligner", "coverage")],
    "loss_outlier": [("loss", "loss")],
}
DEFAULT_MIN_GROUP = 20  # a domain with fewer measured samples is compared with everything audited (as `rate` does)
# Per-domain statistics the page shows by name, in this order (key, column heading); any other key is shown too.
DOMAIN_COLUMNS = [
    ("population", "in manifest"), ("samples", "audited"), ("low_quality_percentage", "flagged %"),
    ("hard_failures", "hard failures"), ("soft_only", "soft only"), ("expected_false_alarms", "false alarms expected"),
    ("estimated_low_quality_percentage", "estimated low quality %"), ("weight", "weight"),
    ("mean_coverage", "mean coverage"), ("length_mismatch_percentage", "length mismatch %"),
]
_HIDDEN_DOMAIN_KEYS = {"low_quality_samples"}  # repeated by "flagged %" × "audited"
_SHOWN_REPORT_KEYS = {"decision", "low_quality_percentage", "low_quality_ci95", "domain_statistics", "flagged",
                      "reasons", "thresholds", "manifest", "total_samples", "low_quality_samples",
                      "hard_failure_samples", "soft_only_samples", "sample_low_quality_percentage", "cleaning",
                      "visibility"}
_ENTRY_KEYS = {"id", "domain", "reasons", "error", "notes", "z"}  # a flagged entry's other dicts are measurements


@dataclass
class Evidence:
    reason: str
    hard: bool
    text: str  # the reason's values in words; "" when nothing more than the reason is known


@dataclass
class Measure:
    scorer: str
    key: str
    value: str
    reference: str = ""  # "domain median 11.0, z +4.2"


@dataclass
class FlaggedSample:
    id: str
    domain: str
    reasons: list[str]
    found_by: list[str]  # "decision sample" (the report's flagged list), "cleaning" (removed.jsonl)
    measures: dict[str, dict] = field(default_factory=dict)  # scorer → its numbers for this sample
    error: str | None = None  # why the audio could not be decoded
    notes: dict[str, str] = field(default_factory=dict)  # reason → the scorer's own words for its values
    z: dict[str, float] = field(default_factory=dict)  # reason → the scorer's own z (`Scorer.flag_scores`)
    hard: bool = False
    score: float | None = None  # the largest |z| behind its soft reasons (`_explain`)
    evidence: list[Evidence] = field(default_factory=list)
    rows: list[Measure] = field(default_factory=list)
    text: str | None = None  # the transcript, from the manifest
    hypothesis: str | None = None  # the asr scorer's transcript
    duration: float | None = None
    audio: str | None = None  # the clip's path relative to the report folder
    audio_note: str | None = None  # why there is no audio

    @property
    def score_text(self) -> str:
        if self.hard:
            return "hard failure"
        return f"|z| {self.score:.1f}" if self.score is not None else "—"


@dataclass
class AuditSection:
    folder: Path
    report: dict
    domain_columns: list[tuple[str, str]]
    domains: list[tuple[str, list[str]]]  # (domain, cells in `domain_columns` order)
    visibility: list[str]  # per model scorer, where it can see wrong transcripts and where not, in words
    flagged: list[FlaggedSample]  # ranked; the first `max_samples` have audio
    shown: int  # how many of `flagged` the page lists
    manifest: Path | None
    notes: list[str]
    commands: list[dict]
    other: dict  # report keys the page does not lay out (shown as JSON, so new sections are never hidden)


# ---------------------------------------------------------------------------------------------------- reading


def read_audit(folder: Path, out_dir: Path, *, max_samples: int) -> AuditSection:
    """The section for one audit folder; the audio of the first `max_samples` ranked samples is written to
    OUT/audio/ (16 kHz mono FLAC)."""
    report = read_json(folder / REPORT_FILE)
    for key in ("decision", "low_quality_percentage", "domain_statistics"):
        if key not in report:
            raise DataError(f"{folder / REPORT_FILE}: no {key!r}; not a report of `caspi audit`")
    commands = read_commands(folder)
    notes: list[str] = []
    manifest, note = find_manifest(report, folder, commands)
    if note:
        notes.append(note)
    cuts = {c.id: c for c in read_manifest(manifest)} if manifest else {}
    samples = _flagged(report, folder)
    domains = {c.id: cut_domain(c) for c in cuts.values()} or _domains_without_manifest(folder)
    if domains:
        domains.update({s.id: s.domain for s in samples})
    refs = References(folder / SCORES_FILE, report, domains or None)
    for s in samples:
        if not s.measures:
            s.measures = refs.measures_of(s.id)
        _explain(s, refs, report)
    samples.sort(key=_rank)
    shown = min(len(samples), max_samples)
    audio_dir = out_dir / "audio"
    for s in samples[:shown]:
        cut = cuts.get(s.id)
        if cut is None:
            s.audio_note = "audio not available: " + ("the audited manifest was not found" if not manifest
                                                     else "the sample is not in the audited manifest")
            continue
        s.text, s.duration = cut_text(cut), float(cut.duration)
        if s.error:
            s.audio_note = f"audio could not be decoded: {s.error}"
            continue
        try:
            audio = load_cut_audio(cut)
        except AudioError as exc:
            s.audio_note = f"audio could not be decoded: {exc}"
            continue
        audio_dir.mkdir(parents=True, exist_ok=True)
        path = audio_dir / clip_name(folder, s.id)
        write_flac(path, audio)
        s.audio = path.relative_to(out_dir).as_posix()
    columns, rows, summaries = _domain_table(report["domain_statistics"])
    other = {k: v for k, v in report.items() if k not in _SHOWN_REPORT_KEYS}
    return AuditSection(folder, report, columns, rows, _visibility(report) + summaries, samples, shown, manifest,
                        notes, commands, other)


def find_manifest(report: dict, folder: Path, commands: list[dict]) -> tuple[Path | None, str | None]:
    """The audited manifest (its sha256 must be the report's), or (None, why not). A relative path is looked up
    from where `caspi audit` ran (commands.jsonl), the current folder, and the audit folder's parents."""
    raw = Path(str(report.get("manifest", "")))
    if not str(raw):
        return None, "the report names no manifest: flagged samples are listed without audio or transcripts"
    if raw.is_absolute():
        candidates = [raw]
    else:
        candidates = [Path(c["cwd"]) / raw for c in commands if isinstance(c.get("cwd"), str)]
        candidates += [Path.cwd() / raw] + [parent / raw for parent in folder.resolve().parents]
    wanted = report.get("manifest_sha256")
    differing = []
    for candidate in dict.fromkeys(candidates):  # in order, once each
        if candidate.is_file():
            if wanted is None or file_sha256(candidate) == wanted:
                return candidate, None
            differing.append(str(candidate))
    if differing:
        return None, (f"the audited manifest {raw} has changed since the audit ({', '.join(differing)} has another "
                      "sha256): flagged samples are listed without audio or transcripts")
    return None, (f"the audited manifest {raw} was not found (run `caspi report` from the folder `caspi audit` ran "
                  "in): flagged samples are listed without audio or transcripts")


def _flagged(report: dict, folder: Path) -> list[FlaggedSample]:
    """The report's flagged samples and removed.jsonl's, merged by id (reasons united)."""
    by_id: dict[str, FlaggedSample] = {}
    for entry in report.get("flagged", []):
        measures = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS and isinstance(v, dict)}
        notes = entry.get("notes") if isinstance(entry.get("notes"), dict) else {}
        zs = entry.get("z") if isinstance(entry.get("z"), dict) else {}
        by_id[entry["id"]] = FlaggedSample(entry["id"], str(entry.get("domain", "")), list(entry.get("reasons", [])),
                                           ["decision sample"], measures, entry.get("error"),
                                           {str(k): str(v) for k, v in notes.items()},
                                           z={str(k): float(v) for k, v in zs.items() if _is_number(v)})
    removed = folder / REMOVED_FILE
    if removed.is_file():
        for n, line in enumerate(removed.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                sample_id, reasons = entry["id"], list(entry["reasons"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{removed}:{n}: not a removed-sample record ({exc})") from exc
            s = by_id.get(sample_id)
            if s is None:
                by_id[sample_id] = FlaggedSample(sample_id, str(entry.get("domain", "")), reasons, ["cleaning"])
            else:
                s.reasons += [r for r in reasons if r not in s.reasons]
                s.found_by.append("cleaning")
    return list(by_id.values())


def _domains_without_manifest(folder: Path) -> dict[str, str]:
    """Sample id → domain from the cleaned manifest when the audited one is missing (with removed.jsonl, every
    sample's domain); {} without it."""
    cleaned = folder / CLEANED_FILE
    if not cleaned.is_file():
        return {}
    return {c.id: cut_domain(c) for c in read_manifest(cleaned)}


def clip_name(folder: Path, sample_id: str) -> str:
    """A file name for a sample's clip that is safe on every file system and in a URL, unique per (audit folder,
    sample): the readable part of the id plus a hash of both."""
    readable = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in sample_id)[:60]
    digest = hashlib.sha256(f"{folder.resolve()}\0{sample_id}".encode()).hexdigest()[:10]
    return f"{readable.strip('.') or 'clip'}-{digest}.flac"


# ---------------------------------------------------------------------------------------------------- references


class References:
    """Every current measurement of the audit (scores.jsonl, filtered to the report's scorers) and, per (scorer,
    key), each sample's reference median and robust z within its domain. `domains` None: the samples' domains are
    unknown (no manifest left), so every sample is compared with everything audited."""

    def __init__(self, scores: Path, report: dict, domains: dict[str, str] | None):
        self.domains = domains
        wanted = {s["name"]: (s.get("cache_key"), s.get("model_identity")) for s in report.get("scorers", [])}
        self.min_group = {s["name"]: int(s.get("thresholds", {}).get("min_domain_samples", DEFAULT_MIN_GROUP))
                          for s in report.get("scorers", [])}
        self.values: dict[tuple[str, str], dict] = {}  # (sample id, scorer) → values
        self.by_id: dict[str, dict[str, dict]] = {}  # sample id → scorer → values (the same dicts)
        if scores.is_file():
            for line in scores.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                    key = (r["id"], r["scorer"])
                    version, model, values = r["version"], r["model"], r["values"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill: the audit skips it too
                if not wanted or wanted.get(key[1]) == (version, model):
                    self.values[key] = values
                    self.by_id.setdefault(key[0], {})[key[1]] = values
        self._stats: dict[tuple[str, str], dict[str, tuple[float, float, str]]] = {}

    def measures_of(self, sample_id: str) -> dict[str, dict]:
        return dict(self.by_id.get(sample_id, {}))

    def stat(self, scorer: str, key: str, sample_id: str) -> tuple[float, float, str] | None:
        """(reference median, robust z, what the reference is) of one measurement, or None when unknown."""
        if (scorer, key) not in self._stats:
            self._stats[(scorer, key)] = self._compute(scorer, key)
        return self._stats[(scorer, key)].get(sample_id)

    def _compute(self, scorer: str, key: str) -> dict[str, tuple[float, float, str]]:
        ids, values = [], []
        for (sample_id, name), v in self.values.items():
            x = v.get(key) if name == scorer else None
            known = self.domains is None or sample_id in self.domains
            if name == scorer and known and _is_number(x) and math.isfinite(x):
                ids.append(sample_id)
                values.append(float(x))
        if len(values) < 3:
            return {}
        min_group = self.min_group.get(scorer, DEFAULT_MIN_GROUP)
        if self.domains is None:  # one group, larger than any minimum: everything audited is the reference
            groups, min_group = ["*"] * len(ids), 1
        else:
            groups = [self.domains[i] for i in ids]
        z = robust_z(values, groups, min_group)
        arr, names = np.asarray(values), np.asarray(groups)
        overall = float(np.median(arr))
        medians = {}
        for g in set(groups):
            own = arr[names == g]
            own_reference = own.size >= min_group and g != "*"
            medians[g] = (float(np.median(own)), "domain median") if own_reference else \
                (overall, "median of all audited")
        return {i: (medians[g][0], float(zi), medians[g][1]) for i, g, zi in zip(ids, groups, z)}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---------------------------------------------------------------------------------------------------- evidence


def _tied(reason: str, measures: dict[str, dict]) -> list[tuple[str, str]]:
    """The (scorer, key) measurements a reason is judged on (see the module docstring)."""
    if reason in REASON_MEASURES:
        return REASON_MEASURES[reason]
    owner = max((name for name in measures if reason.startswith(name)), key=len, default=None)
    if owner is None:
        return []
    return [(owner, k) for k, v in measures[owner].items() if _is_number(v)]


def _explain(s: FlaggedSample, refs: References, report: dict) -> None:
    """Fill the sample's hardness, score, evidence lines and measurement rows."""
    thresholds = {sc["name"]: sc.get("thresholds", {}) for sc in report.get("scorers", [])}
    s.hard = any(is_hard(r) for r in s.reasons)
    zs = []
    for reason in s.reasons:
        if reason in s.z:  # the z the scorer flagged on (a fit's residual, a one-sided scale) over a plain one
            zs.append(abs(s.z[reason]))
        else:
            for scorer, key in _tied(reason, s.measures):
                st = refs.stat(scorer, key, s.id)
                if st is not None and math.isfinite(st[1]):
                    zs.append(abs(st[1]))
        # The scorer's own words when the report has them (`Scorer.explain`), else the same figures worked out here.
        words = s.notes.get(reason) or _words(reason, s, refs, thresholds)
        s.evidence.append(Evidence(reason, is_hard(reason), words))
    s.score = max(zs) if zs else None
    asr = s.measures.get("asr", {})
    if isinstance(asr.get("hypothesis"), str):
        s.hypothesis = asr["hypothesis"]
    for scorer, values in s.measures.items():
        for key, value in values.items():
            if key == "hypothesis":
                continue  # shown as text of its own
            st = refs.stat(scorer, key, s.id) if _is_number(value) else None
            reference = f"{st[2]} {fmt(st[0])}, z {st[1]:+.1f}" if st is not None else ""
            s.rows.append(Measure(scorer, key, fmt(value), reference))


def _words(reason: str, s: FlaggedSample, refs: References, thresholds: dict) -> str:
    """A reason's values in words, e.g. "20.9 chars/s, median of all audited 11.0 (z +5.2)"."""
    m = s.measures

    def against(scorer: str, key: str, unit: str) -> str:
        value = m.get(scorer, {}).get(key)
        if not _is_number(value):
            return ""
        st = refs.stat(scorer, key, s.id)
        tail = f", {st[2]} {st[0]:.1f} (z {st[1]:+.1f})" if st is not None else ""
        return f"{value:.1f} {unit}{tail}"

    if reason == "unreadable":
        return s.error or "the audio could not be decoded"
    if reason in ("rate_low", "rate_high"):
        return against("rate", "chars_per_s", "chars/s")
    if reason in ("text_exceeds_speech", "speech_exceeds_text"):
        return against("vad", "chars_per_speech_s", "chars per second of speech")
    if reason == "no_speech" and "vad" in m:
        v = m["vad"]
        parts = []
        if _is_number(v.get("max_speech_prob")):
            parts.append(f"peak speech probability {v['max_speech_prob']:.2f}")
        if _is_number(v.get("speech_s")) and _is_number(v.get("duration_s")):
            parts.append(f"{v['speech_s']:.2f} s of speech in {v['duration_s']:.2f} s")
        return ", ".join(parts)
    if reason == "empty_transcript":
        return "no letters or digits after normalisation"
    if reason == "latin_script" and _is_number(m.get("text", {}).get("latin_share")):
        limit = thresholds.get("text", {}).get("max_latin_share")
        return f"{m['text']['latin_share']:.0%} of the letters are Latin" + (
            f" (limit {limit:.0%})" if _is_number(limit) else "")
    if reason == "low_alignment" and "ctc" in m:
        c = m["ctc"]
        if c.get("feasible") is False:
            return "the transcript cannot be aligned to the audio (too long for it)"
        if _is_number(c.get("coverage")):
            limit = thresholds.get("ctc", {}).get("min_coverage")
            return f"{c['coverage']:.0%} of the characters aligned" + (
                f" (limit {limit:.0%})" if _is_number(limit) else "")
    if reason == "asr_mismatch" and _is_number(m.get("asr", {}).get("cer")):
        limit = thresholds.get("asr", {}).get("max_cer")
        return f"CER {m['asr']['cer']:.2f} against the model's transcript" + (
            f" (limit {limit:g})" if _is_number(limit) else "")
    # A reason of a scorer this module does not know: its tied numbers, each against its reference.
    parts = []
    for scorer, key in _tied(reason, m):
        value = m.get(scorer, {}).get(key)
        if _is_number(value):
            st = refs.stat(scorer, key, s.id)
            parts.append(f"{scorer}.{key} {fmt(value)}" + (f" ({st[2]} {fmt(st[0])}, z {st[1]:+.1f})" if st else ""))
    return "; ".join(parts)


def _rank(s: FlaggedSample) -> tuple:
    if s.hard:
        first_hard = min(r for r in s.reasons if is_hard(r))
        return (0, first_hard, 0.0, s.id)
    return (1, "", -(s.score if s.score is not None else -math.inf), s.id)


# ---------------------------------------------------------------------------------------------------- tables


def _visibility(report: dict) -> list[str]:
    """The report's `visibility` ({scorer: {"sees": [domains], "cannot_see": [domains]}}) in words."""
    lines = []
    for scorer, v in (report.get("visibility") or {}).items():
        if isinstance(v, dict):
            sees, blind = ", ".join(v.get("sees") or []) or "none", ", ".join(v.get("cannot_see") or []) or "none"
            lines.append(f"The {scorer} scorer sees wrong transcripts in: {sees}; cannot see them in: {blind}.")
    return lines


def _domain_table(stats: dict) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]], list[str]]:
    """The per-domain table: the known columns present, then every other key (a dict, such as a model scorer's
    `domain_report`, flattened one level), so that statistics added to the report show up without a change here;
    and each such dict's `summary` line, "scorer, domain: summary"."""
    present = {k for d in stats.values() if isinstance(d, dict) for k in d}
    columns = [(k, label) for k, label in DOMAIN_COLUMNS if k in present]
    known = {k for k, _ in DOMAIN_COLUMNS} | _HIDDEN_DOMAIN_KEYS
    extra: list[tuple[str, str]] = []
    summaries = []
    for domain, d in stats.items():
        for k, v in (d.items() if isinstance(d, dict) else []):
            if k in known:
                continue
            if isinstance(v, dict) and isinstance(v.get("summary"), str):
                summaries.append(f"{k}, {domain}: {v['summary']}")
            for key in [f"{k}.{sub}" for sub in v if sub != "summary"] if isinstance(v, dict) else [k]:
                column = (key, key.replace("_", " ").replace(".", " "))
                if column not in extra:
                    extra.append(column)
    columns += extra
    rows = []
    for domain, d in stats.items():
        d = d if isinstance(d, dict) else {}
        rows.append((domain, [fmt(_dotted(d, k), percent=k.endswith("percentage")) for k, _ in columns]))
    return columns, rows, summaries


def _dotted(d: dict, key: str):
    if key in d:
        return d[key]
    head, _, tail = key.partition(".")
    inner = d.get(head)
    return inner.get(tail) if isinstance(inner, dict) else None


def fmt(value, percent: bool = False) -> str:
    """A value for a table cell: numbers to 3 significant digits (percentages to 1 decimal), NaN/None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if percent:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:199] + "…"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:199] + "…"
