"""One module per kind of source `caspi import` reads: what is specific to it, and nothing else.

- `hf`: a Hugging Face dataset from the hub (`org/name[:config]`), a `save_to_disk` folder, or parquet file(s);
- `nemo`: a NeMo-style JSONL manifest (`audio_filepath`, `text`, optional `duration`, `domain`, `id`);
- `folder`: a folder of audio files with same-named `.txt` transcripts;
- `lhotse`: a Lhotse CutSet manifest (re-validated; other `custom` fields on its cuts are kept);
- `sets`: the field's eval sets by name (`eval-d1`, `kan`, ...): hub id, split, columns and domain, read from the hub
  through `hf` or from a local stand-in root of parquet files.

Each importer checks the source's schema at once (a missing column or field is a `DataError` naming it) and returns
`(kind, number of samples if known, jobs)`: an iterator of `common.Job`, one per sample, in source order, with
whatever it could already reject without decoding (`Job.reject`). `caspi.data.ingest` picks the importer for a
source, then validates, decodes and writes every job the same way whatever its source; it imports these modules,
never the other way round.
"""
