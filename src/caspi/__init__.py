"""Caspi: fine-tune speech-LLM ASR models for Hebrew (audit, train, evaluate)."""

__version__ = "0.1.0"
