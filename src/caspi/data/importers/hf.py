"""Hugging Face sources: a hub dataset (`org/name` or `org/name:config`) through `datasets.load_dataset`, a local
`save_to_disk` folder, or local parquet file(s) (one split picked by hub file naming, so a test split never leaks
into training data).

The audio column is cast to `Audio(decode=False)` and the bytes or path it holds go to `caspi.data.ingest`, which
decodes them with soundfile: audio decoding inside `datasets` >= 4 needs torchcodec + FFmpeg (DESIGN.md). Ids come
from an `id` column (or `id_field`), else `<name>-<split>-<row>`; the domain from a `domain` column, else the
dataset's name. `datasets` is imported inside the functions: it is heavy and only this source needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from caspi.data.importers.common import Job, resolve_path, resolve_text_field
from caspi.errors import DataError

KNOWN_SPLITS = ("train", "validation", "valid", "dev", "test")


def from_hub(dataset_id: str, *, split, **fields):
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


def from_disk(path: Path, *, split, **fields):
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


def from_parquet(files: list[Path], root: Path, name: str, *, split, **fields):
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
    text_field = resolve_text_field(text_field, columns, label)
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

    def jobs() -> Iterator[Job]:
        for i, row in enumerate(ds):
            cut_id = str(row[id_field]) if id_field and row[id_field] is not None else f"{name}-{split}-{i:07d}"
            job = Job(
                id=cut_id,
                source=f"{label}[{i}]",
                text=row[text_field],
                domain=domain or (str(row[domain_field]) if domain_field and row[domain_field] else name),
            )
            value = row[audio_field] or {}
            if value.get("bytes"):
                job.audio = value["bytes"]
            elif value.get("path"):
                job.audio = str(resolve_path(value["path"], base_dir))
            else:
                job.reject = ("missing_field", f"no audio bytes or path in column {audio_field!r}")
            yield job

    return kind, len(ds), jobs()
