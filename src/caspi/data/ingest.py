"""`caspi import`: turn a dataset into a Caspi manifest (a Lhotse CutSet), losing nothing silently.

`import_source` detects the kind of source and hands it to its importer (`caspi.data.importers`):
- a Hugging Face dataset id (`org/name`), a local `save_to_disk` folder, or local parquet file(s) (`importers.hf`);
- a NeMo-style JSONL manifest (`importers.nemo`);
- a folder of audio files (wav, flac, ogg, mp3) with same-named `.txt` transcripts (`importers.folder`);
- a Lhotse CutSet manifest (`importers.lhotse`);
- one of the field's eval sets by name (`eval-d1`, `kan`, ...: `importers.sets`), from the hub or a stand-in root.
What follows is the same for every source, and lives here: each importer yields jobs, checked first for what needs
no audio (transcript, duplicate id) in source order, then decoded (in a process pool) to check the audio. Files
that are already 16 kHz mono WAV/FLAC are referenced in place; everything else is written as 16 kHz mono FLAC to
`<out folder>/audio/<id>.flac`. The manifest is written last.

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

import hashlib
import logging
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from lhotse import CutSet, MonoCut

from caspi.data.audio import SAMPLE_RATE, decode_audio, write_flac
from caspi.data.cuts import load_cut_audio, make_cut, write_jsonl, write_manifest
from caspi.data.importers.common import Job, first_record
from caspi.data.importers.folder import AUDIO_EXTENSIONS, from_folder
from caspi.data.importers.hf import from_disk, from_hub, from_parquet
from caspi.data.importers.lhotse import from_lhotse
from caspi.data.importers.nemo import from_nemo
from caspi.data.importers.sets import EVAL_SETS, EvalSet, open_eval_set
from caspi.errors import AudioError, ConfigError, DataError
from caspi.progress import progress as show_progress

log = logging.getLogger(__name__)

DURATION_TOLERANCE = 0.1  # seconds; NeMo declared vs decoded duration before a warning
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
    source: str | Path | EvalSet,
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
    sets_root: str | Path | None = None,
) -> ImportResult:
    """Import `source` (HF id, save_to_disk folder, parquet, NeMo JSONL, audio folder or Lhotse manifest) to `out`.

    `out` is the manifest path (`.jsonl.gz` or `.jsonl`); converted audio goes to `<out folder>/audio/` and
    rejected samples to `<out folder>/rejected.jsonl`. `domain` overrides any per-sample domain; otherwise a
    `domain` column/field is used, else the dataset's name. `text_field`, `audio_field` and `id_field` override
    the default column names; `split` picks a split of a HF dataset or split-named parquet files (default
    `train`). `max_duration`/`min_duration` (seconds) reject samples outside the range. `strict=True` raises
    `DataError` on the first bad sample instead of skipping it. Decoding runs in `workers` processes.

    An eval set's name (`caspi.data.importers.sets.EVAL_SETS`; an existing file or folder of that name wins unless
    `sets_root` is given) or its `EvalSet` fills in hub id, split, columns and domain (arguments given still
    override them); `sets_root` (else `$CASPI_EVAL_SETS`) is a local stand-in root read instead of the hub.

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
        sets_root=sets_root,
    )
    audio_dir.mkdir(parents=True, exist_ok=True)

    cuts, rejections, warnings = [], [], []
    written = in_place = 0
    seen_ids: set[str] = set()
    bar = show_progress(total, f"import ({kind})", enabled=progress)
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
    source: str | Path | EvalSet, *, audio_dir: Path, domain, text_field, audio_field, id_field, split, sets_root
) -> tuple[str, int | None, Iterator[Job]]:
    """Recognise the source type; return (kind, number of samples if known, jobs)."""
    fields = {"domain": domain, "text_field": text_field, "audio_field": audio_field, "id_field": id_field}
    if isinstance(source, EvalSet) or (sets_root is not None and str(source) in EVAL_SETS):
        return open_eval_set(source, sets_root=sets_root, split=split, **fields)
    if sets_root is not None:
        raise ConfigError(f"{source}: --sets-root applies to an eval set name ({', '.join(EVAL_SETS)}), "
                          "not to a file, folder or hub id")
    path = Path(source)
    if path.is_file():
        if path.suffix == ".parquet":
            return from_parquet([path], path.parent, path.stem, split=split, **fields)
        if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
            first = first_record(path)
            if "supervisions" in first or ("recording" in first and "type" in first):
                return from_lhotse(path, domain)
            if (audio_field or "audio_filepath") in first:
                return from_nemo(path, **fields)
            raise ConfigError(
                f"{path}: neither a NeMo manifest (no '{audio_field or 'audio_filepath'}' field) nor a Lhotse "
                f"CutSet (no 'supervisions'); the first record has fields {sorted(first)}"
            )
        raise ConfigError(
            f"{path}: unsupported file type; expected .parquet, a NeMo .jsonl manifest or a Lhotse .jsonl.gz"
        )
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return from_disk(path, split=split, **fields)
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return from_parquet(parquet, path, path.name, split=split, **fields)
        audio = [
            p
            for p in sorted(path.rglob("*"))
            if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and audio_dir not in p.parents
        ]
        if audio:
            return from_folder(path, audio, domain)
        raise ConfigError(
            f"{path}: folder holds no HF dataset (save_to_disk), no parquet files and no audio files "
            f"({', '.join(AUDIO_EXTENSIONS)})"
        )
    if str(source) in EVAL_SETS:
        return open_eval_set(str(source), split=split, **fields)
    if _HF_ID.match(str(source)) and not str(source).startswith("."):
        return from_hub(str(source), split=split, **fields)
    raise ConfigError(f"{source}: not an existing file or folder, a Hugging Face dataset id of the form 'org/name', "
                      f"nor an eval set name ({', '.join(EVAL_SETS)})")


# ------------------------------------------------------------------------------------------------ validation


def _check_before_decoding(jobs: Iterable[Job], seen_ids: set[str], audio_dir: Path) -> Iterator[Job]:
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

    def __call__(self, job: Job) -> _Decoded:
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


def _load(job: Job):
    if isinstance(job.audio, dict):
        return load_cut_audio(MonoCut.from_dict(job.audio), label=f"{job.source} ({job.id})")
    samples, _ = decode_audio(job.audio, name=f"{job.source} ({job.id})" if isinstance(job.audio, bytes) else None)
    return samples


def _usable_in_place(path: str) -> bool:
    """True for a 16 kHz mono WAV/FLAC file, which training can read as it is."""
    info = sf.info(path)
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.format in IN_PLACE_FORMATS


def _run_chunk(fn: Callable[[Job], _Decoded], chunk: list[Job]) -> list[_Decoded]:
    """A pool task: several jobs at once, so inter-process overhead (~1 ms a task) is paid once per chunk."""
    return [_Decoded() if job.reject else fn(job) for job in chunk]


def _chunks(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    chunk: list[Job] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_map(fn: Callable[[Job], _Decoded], jobs: Iterable[Job], workers: int, chunk_size: int = 16):
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
