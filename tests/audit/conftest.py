"""A tiny model that hears tones, for the model scorers' tests: it learned which sentence each of four tones says,
and never heard anything else (noise is a domain it cannot see)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TONE_TEXTS = ["שלום עולם", "בוקר טוב לכולם", "מה שלומך היום", "לילה שקט מאוד"]
TONE_FREQS = [300.0, 600.0, 1200.0, 2400.0]  # Hz: TONE_FREQS[i] "says" TONE_TEXTS[i]


@pytest.fixture(scope="session")
def tone_sentences() -> list[tuple[float, str]]:
    """(tone frequency in Hz, the sentence the tone model learned for it)."""
    return list(zip(TONE_FREQS, TONE_TEXTS))


@pytest.fixture(scope="session")
def tone_model():
    """(model, processor, family): a tiny Qwen3-ASR ("xs", the He-initialised audio front end that lets a model
    trained from scratch read its audio) trained for 150 full-batch steps (about 3 s on one thread) on one 1 s clip
    per tone. Measured: the loss of a tone's own sentence ends near 0.001 nats/token and another tone's sentence
    costs 0.6–1.9; on noise both score as the text prior alone."""
    import torch

    from caspi.models import get_family
    from caspi.testing import tone, torch_threads

    family = get_family("qwen3_asr")
    with torch_threads(1):
        model, processor = family.tiny(TONE_TEXTS, seed=0, size="xs", audio_init="he")
        batch = family.build_inputs(processor, [tone(1.0, f) for f in TONE_FREQS], TONE_TEXTS)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(150):
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), processor, family


@pytest.fixture
def tone_clips() -> list[tuple[str, str, np.ndarray, str]]:
    """(id, domain, 16 kHz clip, transcript): each tone twice (1.0 s and 1.2 s, two loudnesses) with its own sentence,
    except `tones-3`, which carries another tone's sentence; and eight noise clips with the sentences in turn."""
    from caspi.testing import tone

    clips = []
    for i in range(8):
        k = i % 4
        text = TONE_TEXTS[(k + 1) % 4] if i == 3 else TONE_TEXTS[k]
        clips.append((f"tones-{i}", "tones", tone(1.0, TONE_FREQS[k], amplitude=0.3 - 0.05 * (i // 4)),
                      text))
    rng = np.random.default_rng(0)
    for i in range(8):
        noise = (0.2 * rng.standard_normal(16000)).astype(np.float32)
        clips.append((f"noise-{i}", "noise", noise, TONE_TEXTS[i % 4]))
    return clips


@pytest.fixture
def tone_manifest(tone_clips, tmp_path) -> Path:
    """`tone_clips` as FLAC files and a manifest under a temporary folder."""
    from lhotse import CutSet

    from caspi.data.audio import write_flac
    from caspi.data.cuts import make_cut, write_manifest

    folder = tmp_path / "tones"
    folder.mkdir()
    cuts = []
    for cut_id, domain, clip, text in tone_clips:
        path = folder / f"{cut_id}.flac"
        write_flac(path, clip)
        cuts.append(make_cut(cut_id, path, len(clip), text, domain))
    return write_manifest(CutSet.from_cuts(cuts), folder / "tones.jsonl.gz")
