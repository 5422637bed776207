"""Data layer: everything between files on disk and a training batch. It imports only `caspi.errors` (never config
or models): the recipe arrives as a duck-typed object, a model family's window as a number.

- `audio`: decoding (soundfile) and resampling (soxr) to 16 kHz mono float32, FLAC writing.
- `cuts`: the one shape of a manifest entry (a Lhotse cut) and reading/writing manifests.
- `text`: Hebrew normalisation (`for_training`, `for_scoring`, `for_leaderboard`).
- `stats`: mergeable manifest statistics for `caspi stats`.
- `synth`: the synthetic espeak-ng corpus with planted errors (word lists in `lexicon/`).
- `ingest`: `caspi import`, from any source to a manifest; `importers/` holds what is specific to each source kind
  (`hf`, `nemo`, `folder`, `lhotse`) and the field's eval sets by name (`sets`).
- `vad`: silero-vad speech probabilities and segments, batched across clips (the audit's `vad` scorer, long-form
  chunking).
- `sampling`: duration-bucketed, distributed, exactly resumable micro-batch sampling.
- `dataset`: a sampled micro-batch to padded audio and training text (then the family's features and tokens), with
  speed perturbation.
- `augment`: SpecAugment on feature batches, in the training process.
"""
