"""`caspi import`: turn a dataset into a Caspi manifest (a Lhotse CutSet), losing nothing silently.

Sources, detected from `source`:
- a Hugging Face dataset id (`org/name`) through `datasets.load_dataset`, a local `save_to_disk` folder, or local
  parquet file(s). The audio column is cast to `Audio(decode=False)` and decoded here with soundfile, because
  audio decoding inside `datasets` >= 4 needs torchcodec + FFmpeg (DESIGN.md);
- a NeMo-style JSONL manifest (`audio_filepath`, `text`, optional `duration`, `domain`, `id`);
- a folder of audio files (wav, flac, ogg, mp3) with same-named `.txt` transcripts;
- a Lhotse CutSet manifest (validated and re-written; other `custom` fields on its cuts are kept).

Every sample is decoded (in a process pool) to check it. Files that are already 16 kHz mono WAV/FLAC are
referenced in place; everything else is written as 16 kHz mono FLAC to `<out folder>/audio/<id>.flac`.

A bad sample is skipped and written to `rejected.jsonl` next to the manifest with its id, source location,
reason tag and message (`strict=True` raises on the first one instead). Reason tags: `unreadable`, `empty`,
`non_finite` (from `decode_audio`), `empty_transcript`, `missing_transcript` (folder source: no `.txt`),
`missing_field`, `bad_record` (a JSONL line that is not a JSON object, a transcript that is not text),
`duplicate_id` (the first occurrence is kept), `too_long` / `too_short` (`max_duration` / `min_duration`).

A NeMo `duration` that disagrees with the decoded length by more than 0.1 s does not reject the sample: the decoded
duration is used and the disagreement is recorded in `ImportResult.warnings` (and logged). The audio itself is
fine in that case; whether its transcript matches is the audit's job (`caspi audit`), which measures it.

A missing column (schema problem) raises `DataError` at once, naming the column and the ones available.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from lhotse import CutSet
from tqdm.auto import tqdm

from caspi.data.audio import SAMPLE_RATE, decode_audio, write_flac
from caspi.data.cuts import (
    cut_domain,
    cut_text,
    load_cut_audio,
    make_cut,
    read_manifest,
    write_jsonl,
    write_manifest,
)
from caspi.errors import AudioError, ConfigError, DataError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
TEXT_FIELDS = ("text", "sentence", "transcription", "transcript")  # tried in order when text_field is None
DURATION_TOLERANCE = 0.1  # seconds; NeMo declared vs decoded duration before a warning
KNOWN_SPLITS = ("train", "validation", "valid", "dev", "test")
IN_PLACE_FORMATS = ("WAV", "WAVEX", "FLAC")  # soundfile format names Lhotse reads directly
_HF_ID = re.compile(r"^[\w.\-]+/[\w.\-]+(:[\w.\-]+)?$")  # org/name or org/name:config


@dataclass
class ImportResult:
    """What `import_source` did. `rejected` counts rejected samples by reason tag."""

    manifest: Path
    rejected_path: Path
    source_kind: str  # hf_hub | hf_disk | parquet | nemo | folder | lhotse
    kept: int
    rejected: dict[str, int]
    hours: float  # total kept audio
    written: int  # FLAC files written under <out folder>/audio
    in_place: int  # files referenced where they were (already 16 kHz mono WAV/FLAC)
    warnings: list[str] = field(default_factory=list)

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        """A few lines for the console."""
        lines = [
            f"imported {self.kept} samples ({self.hours:.2f} h) from a {self.source_kind} source → {self.manifest}",
            f"  audio: {self.in_place} referenced in place, {self.written} written as 16 kHz FLAC",
        ]
        if self.rejected:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items()))
            lines.append(f"  rejected {self.num_rejected}: {reasons} (details in {self.rejected_path})")
        if self.warnings:
            lines.append(f"  {len(self.warnings)} warnings, first: {self.warnings[0]}")
        return "\n".join(lines)


@dataclass
class _Job:
    """One sample on its way through validation. `audio` is a path, encoded bytes, or a Lhotse cut dict."""

    id: str | None
    source: str  # where the sample came from, e.g. `manifest.jsonl:12`, for messages and rejected.jsonl
    text: str | None = None
    domain: str | None = None
    audio: str | bytes | dict | None = None
    declared_duration: float | None = None  # seconds, from a NeMo manifest
    custom: dict | None = None  # extra cut fields to keep (Lhotse source)
    reject: tuple[str, str] | None = None  # (reason, message) when rejected before decoding
    out_path: str | None = None  # where a FLAC is written if the file cannot be referenced in place


@dataclass
class _Decoded:
    """What a worker found. `reason` is None when the sample is good."""

    audio_path: str | None = None
    num_samples: int = 0
    written: bool = False
    reason: str | None = None
    message: str | None = None
    warning: str | None = None


# ---------------------------------------------------------------------------------------------- public entry point


def import_source(
    source: str | Path,
    out: str | Path,
    *,
    domain: str | None = None,
    text_field: str | None = None,
    audio_field: str | None = None,
    id_field: str | None = None,
    split: str | None = None,
    max_duration: float | None = None,
    min_duration: float = 0.0,
    strict: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> ImportResult:
    """Import `source` (HF id, save_to_disk folder, parquet, NeMo JSONL, audio folder or Lhotse manifest) to `out`.

    `out` is the manifest path (`.jsonl.gz` or `.jsonl`); converted audio goes to `<out folder>/audio/` and
    rejected samples to `<out folder>/rejected.jsonl`. `domain` overrides any per-sample domain; otherwise a
    `domain` column/field is used, else the dataset's name. `text_field`, `audio_field` and `id_field` override
    the default column names; `split` picks a split of a HF dataset or split-named parquet files (default
    `train`). `max_duration`/`min_duration` (seconds) reject samples outside the range. `strict=True` raises
    `DataError` on the first bad sample instead of skipping it. Decoding runs in `workers` processes.

    Raises `ConfigError` when the source type cannot be recognised, `DataError` for a missing column, an
    unreachable hub dataset, a bad sample under `strict`, or when no sample survives.
    """
    out = Path(out)
    if not (out.name.endswith(".jsonl.gz") or out.name.endswith(".jsonl")):
        raise ConfigError(f"--out {out}: the manifest path must end in .jsonl.gz or .jsonl")
    audio_dir = out.parent.resolve() / "audio"  # absolute: Lhotse resolves relative paths against the cwd
    rejected_path = out.parent / "rejected.jsonl"

    kind, total, jobs = _open_source(
        source,
        audio_dir=audio_dir,
        domain=domain,
        text_field=text_field,
        audio_field=audio_field,
        id_field=id_field,
        split=split,
    )
    audio_dir.mkdir(parents=True, exist_ok=True)

    cuts, rejections, warnings = [], [], []
    written = in_place = 0
    seen_ids: set[str] = set()
    bar = tqdm(total=total, desc=f"import ({kind})", unit="clip", disable=not progress)
    checked = _check_before_decoding(jobs, seen_ids, audio_dir)
    decode = _Decoder(max_duration=max_duration, min_duration=min_duration)
    results = _ordered_map(decode, checked, workers)
    try:
        for job, result in results:
            bar.update(1)
            reason, message = job.reject or (result.reason, result.message)
            if reason is not None:
                if strict:
                    raise DataError(f"{job.source}: sample {job.id!r} rejected ({reason}): {message}")
                rejections.append({"id": job.id, "source": job.source, "reason": reason, "message": message})
                continue
            if result.warning:
                warnings.append(result.warning)
                log.warning(result.warning)
            written += result.written
            in_place += not result.written
            cuts.append(
                make_cut(job.id, result.audio_path, result.num_samples, job.text, job.domain, custom=job.custom)
            )
    finally:
        results.close()  # stops the worker pool now, also when strict mode raises
        bar.close()

    write_jsonl(rejections, rejected_path)
    counts = dict(Counter(r["reason"] for r in rejections))
    if not cuts:
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "the source is empty"
        raise DataError(f"{source}: no sample survived import ({detail}); see {rejected_path}")
    cutset = CutSet.from_cuts(cuts)
    write_manifest(cutset, out)
    return ImportResult(
        manifest=out,
        rejected_path=rejected_path,
        source_kind=kind,
        kept=len(cuts),
        rejected=counts,
        hours=sum(c.duration for c in cuts) / 3600,
        written=written,
        in_place=in_place,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------------------ source detection


def _open_source(
    source: str | Path, *, audio_dir: Path, domain, text_field, audio_field, id_field, split
) -> tuple[str, int | None, Iterator[_Job]]:
    """Recognise the source type; return (kind, number of samples if known, jobs)."""
    path = Path(source)
    fields = {"domain": domain, "text_field": text_field, "audio_field": audio_field, "id_field": id_field}
    if path.is_file():
        if path.suffix == ".parquet":
            return _from_parquet([path], path.parent, path.stem, split=split, **fields)
        if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
            first = _first_record(path)
            if "supervisions" in first or ("recording" in first and "type" in first):
                return _from_lhotse(path, domain)
            if (audio_field or "audio_filepath") in first:
                return _from_nemo(path, **fields)
            raise ConfigError(
                f"{path}: neither a NeMo manifest (no '{audio_field or 'audio_filepath'}' field) nor a Lhotse "
                f"CutSet (no 'supervisions'); the first record has fields {sorted(first)}"
            )
        raise ConfigError(
            f"{path}: unsupported file type; expected .parquet, a NeMo .jsonl manifest or a Lhotse .jsonl.gz"
        )
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _from_disk(path, split=split, **fields)
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return _from_parquet(parquet, path, path.name, split=split, **fields)
        audio = [
            p
            for p in sorted(path.rglob("*"))
            if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and audio_dir not in p.parents
        ]
        if audio:
            return _from_folder(path, audio, domain)
        raise ConfigError(
            f"{path}: folder holds no HF dataset (save_to_disk), no parquet files and no audio files "
            f"({', '.join(AUDIO_EXTENSIONS)})"
        )
    if _HF_ID.match(str(source)) and not str(source).startswith("."):
        return _from_hub(str(source), split=split, **fields)
    raise ConfigError(f"{source}: not an existing file or folder, nor a Hugging Face dataset id of the form 'org/name'")


def _first_record(path: Path) -> dict:
    """The first JSON object of a (possibly gzipped) JSONL file; `ConfigError` if it has none."""
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}: first line is not JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise ConfigError(f"{path}: first line is not a JSON object")
                return record
    raise ConfigError(f"{path}: file is empty")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


# ------------------------------------------------------------------------------------------------ Hugging Face


def _from_hub(dataset_id: str, *, split, **fields):
    """`org/name` or `org/name:config` (a dataset configuration, e.g. `google/fleurs:he_il`)."""
    import datasets

    split = split or "train"
    repo, _, config = dataset_id.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:  # offline, gated, unknown id, unknown split: the hub raises many types
        raise DataError(
            f"{dataset_id}: cannot load Hugging Face dataset (split {split!r}): {type(exc).__name__}: {exc}"
        ) from None
    name = repo.split("/")[-1] + (f"-{config}" if config else "")
    return _from_hf_dataset(ds, "hf_hub", f"{dataset_id}[{split}]", name, None, split=split, **fields)


def _from_disk(path: Path, *, split, **fields):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable save_to_disk dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; splits available: {sorted(ds)}")
        ds = ds[split]
    return _from_hf_dataset(ds, "hf_disk", str(path), path.name, path, split=split or "train", **fields)


def _split_of(file: Path, root: Path) -> str | None:
    """The split a parquet file belongs to by hub naming (`train-00000-of-00002.parquet`, `test/…`), if any."""
    parts = file.relative_to(root).parts if root in file.parents else (file.name,)
    for split in KNOWN_SPLITS:
        if file.name.startswith(f"{split}-") or file.stem == split or split in parts[:-1]:
            return split
    return None


def _from_parquet(files: list[Path], root: Path, name: str, *, split, **fields):
    import datasets

    splits = {f: _split_of(f, root) for f in files}
    if split is not None or any(splits.values()):
        # Never mix a test split into training data: with split-named files, pick one split (default train).
        wanted = split or "train"
        chosen = [f for f in files if splits[f] == wanted]
        if not chosen:
            found = sorted({s for s in splits.values() if s}) or ["none"]
            raise DataError(f"{root}: no parquet files for split {wanted!r}; splits found in file names: {found}")
        files = chosen
    try:
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except Exception as exc:
        raise DataError(f"{root}: cannot read parquet ({type(exc).__name__}: {exc})") from None
    return _from_hf_dataset(ds, "parquet", str(root), name, root, split=split or "train", **fields)


def _from_hf_dataset(ds, kind, label, name, base_dir, *, split, domain, text_field, audio_field, id_field):
    """Jobs from an in-memory `datasets.Dataset`: resolve columns (schema errors now), then one job per row."""
    from datasets import Audio

    columns = list(ds.column_names)
    audio_field = audio_field or "audio"
    text_field = _resolve_text_field(text_field, columns, label)
    for col, what in ((audio_field, "audio"), (id_field, "id")):
        if col is not None and col not in columns:
            raise DataError(f"{label}: no {what} column {col!r}; columns available: {columns}")
    if id_field is None and "id" in columns:
        id_field = "id"
    domain_field = "domain" if domain is None and "domain" in columns else None
    try:
        ds = ds.cast_column(audio_field, Audio(decode=False))
    except Exception as exc:
        raise DataError(
            f"{label}: column {audio_field!r} is not audio (feature {ds.features[audio_field]}): {exc}"
        ) from None

    def jobs() -> Iterator[_Job]:
        for i, row in enumerate(ds):
            cut_id = str(row[id_field]) if id_field and row[id_field] is not None else f"{name}-{split}-{i:07d}"
            job = _Job(
                id=cut_id,
                source=f"{label}[{i}]",
                text=row[text_field],
                domain=domain or (str(row[domain_field]) if domain_field and row[domain_field] else name),
            )
            value = row[audio_field] or {}
            if value.get("bytes"):
                job.audio = value["bytes"]
            elif value.get("path"):
                job.audio = str(_resolve_path(value["path"], base_dir))
            else:
                job.reject = ("missing_field", f"no audio bytes or path in column {audio_field!r}")
            yield job

    return kind, len(ds), jobs()


def _resolve_text_field(text_field: str | None, columns: list[str], label: str) -> str:
    if text_field is not None:
        if text_field not in columns:
            raise DataError(f"{label}: no text column {text_field!r}; columns available: {columns}")
        return text_field
    for candidate in TEXT_FIELDS:
        if candidate in columns:
            return candidate
    raise DataError(
        f"{label}: no transcript column (looked for {', '.join(TEXT_FIELDS)}); columns available: {columns}; "
        "name it with text_field"
    )


def _resolve_path(value: str, base_dir: Path | None) -> Path:
    """A relative audio path resolves against the source's folder first, then the working directory."""
    path = Path(value)
    if path.is_absolute() or base_dir is None:
        return path
    beside = base_dir / path
    if not beside.exists() and path.exists():
        return path.resolve()
    return beside  # also when neither exists, so the error names where the file was expected


# ------------------------------------------------------------------------------------------------ NeMo JSONL


def _from_nemo(path: Path, *, domain, text_field, audio_field, id_field):
    audio_field = audio_field or "audio_filepath"
    id_field = id_field or "id"
    first = _first_record(path)
    text_field = _resolve_text_field(text_field, sorted(first), str(path))
    base = path.parent
    name = base.resolve().name

    with _open_text(path) as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]

    def jobs() -> Iterator[_Job]:
        for lineno, line in lines:
            job = _Job(id=None, source=f"{path}:{lineno}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                job.reject = ("bad_record", f"line is not JSON ({exc})")
                yield job
                continue
            if not isinstance(record, dict):
                job.reject = ("bad_record", "line is not a JSON object")
                yield job
                continue
            audio = record.get(audio_field)
            audio_path = _resolve_path(str(audio), base) if audio else None
            if record.get(id_field) not in (None, ""):
                job.id = str(record[id_field])
            elif audio_path is not None:
                job.id = _derive_id(audio_path, base)
            job.text = record.get(text_field)
            job.domain = domain or str(record.get("domain") or name)
            if audio_path is None:
                job.reject = ("missing_field", f"no {audio_field!r} field; fields: {sorted(record)}")
            elif text_field not in record:
                job.reject = ("missing_field", f"no {text_field!r} field; fields: {sorted(record)}")
            else:
                job.audio = str(audio_path)
                if isinstance(record.get("duration"), (int, float)):
                    job.declared_duration = float(record["duration"])
            yield job

    return "nemo", len(lines), jobs()


def _derive_id(audio_path: Path, base: Path) -> str:
    """A stable id from a file path: relative to `base` when inside it, no extension, `/` → `-`, spaces → `_`."""
    try:
        rel = audio_path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = Path(*audio_path.resolve().parts[1:])
    return re.sub(r"\s+", "_", "-".join(rel.with_suffix("").parts))


# ------------------------------------------------------------------------------------------------ audio folder


def _from_folder(root: Path, files: list[Path], domain: str | None):
    name = root.resolve().name

    def jobs() -> Iterator[_Job]:
        for audio in files:
            job = _Job(id=_derive_id(audio, root), source=str(audio), domain=domain or name, audio=str(audio))
            transcript = audio.with_suffix(".txt")
            if not transcript.is_file():
                job.reject = ("missing_transcript", f"no transcript file {transcript.name} beside the audio")
            else:
                try:  # utf-8-sig drops a byte-order mark that some editors add
                    job.text = transcript.read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError) as exc:
                    job.reject = ("unreadable", f"cannot read transcript {transcript.name} as UTF-8 ({exc})")
            yield job

    return "folder", len(files), jobs()


# ------------------------------------------------------------------------------------------------ Lhotse manifest


def _from_lhotse(path: Path, domain: str | None):
    cuts = read_manifest(path)
    base = path.parent

    def jobs() -> Iterator[_Job]:
        for i, cut in enumerate(cuts):
            custom = {k: v for k, v in (cut.custom or {}).items() if k != "domain"} or None
            job = _Job(
                id=cut.id,
                source=f"{path}:{i + 1}",
                text=cut_text(cut),
                domain=domain or cut_domain(cut),
                custom=custom,
            )
            rec = getattr(cut, "recording", None)
            if rec is None:
                job.reject = ("missing_field", "cut has no recording")
            elif _is_whole_file(cut):
                job.audio = str(_resolve_path(rec.sources[0].source, base))
            else:
                # A cut over part of a file, several channels or a non-file source: let Lhotse load its samples.
                job.audio = cut.to_dict()
            yield job

    return "lhotse", len(cuts), jobs()


def _is_whole_file(cut) -> bool:
    rec = cut.recording
    return (
        len(rec.sources) == 1
        and rec.sources[0].type == "file"
        and not rec.transforms
        and cut.start == 0
        and abs(cut.duration - rec.duration) < 1e-3
    )


# ------------------------------------------------------------------------------------------------ validation


def _check_before_decoding(jobs: Iterable[_Job], seen_ids: set[str], audio_dir: Path) -> Iterator[_Job]:
    """Checks that need no audio (transcript, duplicate id), run in the main process in source order."""
    for job in jobs:
        if job.reject is None:
            if job.text is not None and not isinstance(job.text, str):
                job.reject = ("bad_record", f"transcript is a {type(job.text).__name__}, not text: {job.text!r}")
            elif not job.text or not job.text.strip():
                job.reject = ("empty_transcript", f"transcript is empty ({job.text!r})")
            else:
                job.text = job.text.strip()
        if job.id is not None and job.reject is None:
            if job.id in seen_ids:
                job.reject = ("duplicate_id", f"id {job.id!r} already used by an earlier sample (kept)")
            else:
                seen_ids.add(job.id)
        if job.reject is None:
            job.out_path = str(audio_dir / f"{_file_name(job.id)}.flac")
        yield job


def _file_name(cut_id: str) -> str:
    """A safe file name for an id. Ids that need changing get a hash suffix so two ids never share a file."""
    if re.fullmatch(r"[\w.\-]+", cut_id) and not cut_id.startswith("."):
        return cut_id
    safe = re.sub(r"[^\w.\-]", "_", cut_id).lstrip(".")
    return f"{safe}-{hashlib.sha1(cut_id.encode()).hexdigest()[:8]}"


class _Decoder:
    """Decode one job's audio, check its length, and reference it in place or write 16 kHz FLAC (a pool task)."""

    def __init__(self, max_duration: float | None, min_duration: float):
        self.max_duration = max_duration
        self.min_duration = min_duration

    def __call__(self, job: _Job) -> _Decoded:
        try:
            samples = _load(job)  # (T,) float32 at 16 kHz
        except AudioError as exc:
            return _Decoded(reason=exc.reason, message=str(exc))
        duration = len(samples) / SAMPLE_RATE  # seconds
        if self.max_duration is not None and duration > self.max_duration:
            return _Decoded(reason="too_long", message=f"{duration:.2f} s > max_duration {self.max_duration} s")
        if duration < self.min_duration:
            return _Decoded(reason="too_short", message=f"{duration:.2f} s < min_duration {self.min_duration} s")
        warning = None
        if job.declared_duration is not None and abs(job.declared_duration - duration) > DURATION_TOLERANCE:
            warning = (
                f"{job.id}: declared {job.declared_duration:.2f} s, decoded {duration:.2f} s (using decoded) "
                f"[{job.source}]"
            )
        if isinstance(job.audio, str) and _usable_in_place(job.audio):
            return _Decoded(str(Path(job.audio).resolve()), len(samples), written=False, warning=warning)
        try:
            write_flac(job.out_path, samples)
        except Exception as exc:  # disk full, permissions: this is not the sample's fault
            raise DataError(f"{job.out_path}: cannot write audio ({type(exc).__name__}: {exc})") from None
        return _Decoded(job.out_path, len(samples), written=True, warning=warning)


def _load(job: _Job):
    if isinstance(job.audio, dict):
        from lhotse import MonoCut

        return load_cut_audio(MonoCut.from_dict(job.audio), label=f"{job.source} ({job.id})")
    samples, _ = decode_audio(job.audio, name=f"{job.source} ({job.id})" if isinstance(job.audio, bytes) else None)
    return samples


def _usable_in_place(path: str) -> bool:
    """True for a 16 kHz mono WAV/FLAC file, which training can read as it is."""
    info = sf.info(path)
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.format in IN_PLACE_FORMATS


def _run_chunk(fn: Callable[[_Job], _Decoded], chunk: list[_Job]) -> list[_Decoded]:
    """A pool task: several jobs at once, so inter-process overhead (~1 ms a task) is paid once per chunk."""
    return [_Decoded() if job.reject else fn(job) for job in chunk]


def _chunks(jobs: Iterable[_Job], size: int) -> Iterator[list[_Job]]:
    chunk: list[_Job] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_map(fn: Callable[[_Job], _Decoded], jobs: Iterable[_Job], workers: int, chunk_size: int = 16):
    """Yield (job, fn(job)) in input order, running fn in `workers` processes; pre-rejected jobs pass through.

    At most 4 chunks per worker are in flight, which keeps memory flat when a dataset streams audio bytes
    (`Pool.imap` would queue the whole input).
    """
    if workers <= 1:
        for job in jobs:
            yield job, (_Decoded() if job.reject else fn(job))
        return
    window: deque = deque()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        try:
            for chunk in _chunks(jobs, chunk_size):
                window.append((chunk, pool.submit(_run_chunk, fn, chunk)))
                if len(window) >= 4 * workers:
                    head, future = window.popleft()
                    yield from zip(head, future.result(), strict=True)
            while window:
                head, future = window.popleft()
                yield from zip(head, future.result(), strict=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
