"""Data layer: audio I/O, manifests (Lhotse CutSets), Hebrew text, the synthetic corpus, batching."""
