"""Auxiliary CTC loss (hybrid CTC/attention training), for training only.

A linear head maps the audio embeddings the text decoder receives (Qwen3-ASR: the projector's output; Whisper: the
encoder's) to the vocabulary plus a blank, and CTC aligns them to the transcript's tokens. REFERENCE.md ("Training a
tiny Qwen3-ASR from scratch"): with loss = 0.7 × decoder CE + 0.3 × CTC a tiny model trained from random weights
learns from the audio more reliably. Decoding stays the model's own `generate`; the head is not exported.

    aux = CtcAux(model, vocab_size)          # registers a forward hook on the family's audio-embedding module
    out = model(**batch)                     # the hook keeps the embeddings of this forward pass
    ctc = aux.loss(batch, frame_lens, targets)   # sum over clips of (CTC / target length); divide as you need
    aux.remove()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caspi.models.families import base_model, family_of


class CtcHead(torch.nn.Module):
    """Linear (H → vocab + 1); the blank is the last index."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, vocab_size + 1)
        self.blank = vocab_size

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(embeddings)  # (B, T_a, V + 1) logits


class CtcAux:
    """The CTC head plus a forward hook that captures the audio embeddings of the model's last forward pass."""

    def __init__(self, model: torch.nn.Module, hidden_size: int, vocab_size: int):
        base = base_model(model)
        self.family = family_of(base)
        self.model = model
        self.head = CtcHead(hidden_size, vocab_size)
        self._captured = None
        module = self.family.audio_embedding_module(model)
        self._hook = module.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._captured = output

    def loss(self, batch: dict[str, torch.Tensor], frame_lens: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Σ over clips of CTC(clip) / len(target tokens), from the embeddings captured in the last forward pass.

        `frame_lens` (B,): mel frames of real audio per clip; `targets`: token ids of each transcript (no special
        tokens). Clips whose audio is too short for their target contribute 0 (`zero_infinity`).
        """
        assert self._captured is not None, "CtcAux.loss called before a forward pass of the model"
        embeddings, lens = self.family.unpack_audio_embeddings(self.model, self._captured, batch, frame_lens)
        self._captured = None
        # The head and CTC in float32 (the embeddings may be bf16): log-softmax sums over long sequences lose too
        # much in 16 bits.
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.head(embeddings.to(self.head.proj.weight.dtype)).float()  # (B, T_a, V + 1)
        log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)  # (T_a, B, V + 1)
        target_lens = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        per_clip = F.ctc_loss(
            log_probs, flat, lens.cpu(), target_lens, blank=self.head.blank, reduction="none", zero_infinity=True
        )  # (B,)
        return (per_clip / target_lens.clamp(min=1).to(per_clip.device)).sum()

    def remove(self) -> None:
        self._hook.remove()
