"""Evaluation: WER/CER scoring, per-domain reports, model comparison."""
