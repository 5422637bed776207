"""CTC forced alignment: the Viterbi against brute force and ctc_loss, and the aligner on a tiny wav2vec2 model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from caspi.audit.ctc_align import (
    DEFAULT_THRESHOLD,
    CtcAligner,
    forced_align,
    tiny_ctc_model,
)
from caspi.errors import CheckpointError
from caspi.testing import synthesize_corpus, torch_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Models this small run slower on several threads, badly so on a busy machine (measured: 3x)."""
    with torch_threads(1):
        yield


# --- forced_align ------------------------------------------------------------------------------------------------


def _random_log_probs(rng, frames, vocab):
    return torch.from_numpy(rng.normal(size=(frames, vocab)) * 2).log_softmax(-1).numpy()  # (T, V) float64


def _collapse(path, blank):
    """CTC's many-to-one map: merge runs of a label, drop blanks; also each frame's token index (-1 on blanks)."""
    labels, token_of, prev = [], [], None
    for label in path:
        if label != blank and label != prev:
            labels.append(label)
        token_of.append(len(labels) - 1 if label != blank else -1)
        prev = label
    return labels, token_of


def _brute_force(lp, targets, blank):
    """Best path score, its token frames, and the total log-likelihood, by enumerating all V^T paths."""
    frames, vocab = lp.shape
    best, best_frames, scores = -np.inf, None, []
    for path in itertools.product(range(vocab), repeat=frames):
        labels, token_of = _collapse(path, blank)
        if labels != list(targets):
            continue
        score = float(sum(lp[t, label] for t, label in enumerate(path)))
        scores.append(score)
        if score > best:
            spans = [[t for t, k in enumerate(token_of) if k == j] for j in range(len(targets))]
            best, best_frames = score, [(s[0], s[-1]) for s in spans]
    total = float(np.logaddexp.reduce(scores)) if scores else -np.inf
    return best, best_frames, total


def _ctc_total(lp, targets, blank):
    """-ctc_loss (reduction none): the log-likelihood summed over all alignments."""
    loss = torch.nn.functional.ctc_loss(
        torch.from_numpy(lp)[:, None, :],  # (T, N=1, V)
        torch.tensor([list(targets)], dtype=torch.long).reshape(1, -1),
        input_lengths=torch.tensor([lp.shape[0]]),
        target_lengths=torch.tensor([len(targets)]),
        blank=blank,
        reduction="none",
    )
    return -float(loss[0])


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for frames in range(1, 7):
        for vocab in (2, 3):
            for _ in range(4):
                blank = int(rng.integers(vocab))
                labels = [v for v in range(vocab) if v != blank]
                targets = [int(x) for x in rng.choice(labels, size=rng.integers(0, 4))]
                cases.append((frames, vocab, blank, targets, int(rng.integers(1 << 30))))
    return cases


@pytest.mark.parametrize("frames, vocab, blank, targets, seed", _cases())
def test_viterbi_matches_brute_force_and_ctc_loss(frames, vocab, blank, targets, seed):
    lp = _random_log_probs(np.random.default_rng(seed), frames, vocab)
    best, best_frames, total = _brute_force(lp, targets, blank)
    result = forced_align(lp, targets, blank)

    assert result.feasible == np.isfinite(best)
    assert len(result.token_frames) == len(targets) and result.token_confidence.shape == (len(targets),)
    if not result.feasible:
        assert result.log_likelihood == -np.inf and np.all(result.token_confidence == 0)
        assert _ctc_total(lp, targets, blank) == -np.inf
        return
    assert result.log_likelihood == pytest.approx(best, abs=1e-9)
    assert result.token_frames == best_frames
    conf = [np.exp(lp[a : b + 1, label]).mean() for (a, b), label in zip(best_frames, targets)]
    np.testing.assert_allclose(result.token_confidence, conf, atol=1e-12)
    assert total == pytest.approx(_ctc_total(lp, targets, blank), abs=1e-9)
    assert result.log_likelihood <= total + 1e-9


@pytest.mark.parametrize("targets", [[1, 2, 3], [1, 1, 2, 2], [3, 3, 3], [2, 1, 2, 1, 1]])
def test_viterbi_equals_ctc_loss_when_one_path_fits(targets):
    frames = len(targets) + sum(a == b for a, b in zip(targets, targets[1:]))  # the tightest fit: a single path
    lp = _random_log_probs(np.random.default_rng(1), frames, 4)
    result = forced_align(lp, targets, blank=0)
    assert result.feasible
    assert result.log_likelihood == pytest.approx(_ctc_total(lp, targets, 0), abs=1e-9)
    starts = [a for a, _ in result.token_frames]
    assert starts == sorted(starts) and result.token_frames[-1][1] == frames - 1


def test_viterbi_bound_on_long_input_and_torch_input():
    rng = np.random.default_rng(2)
    lp = _random_log_probs(rng, 200, 12)
    targets = [int(x) for x in rng.integers(1, 12, size=40)]
    from_numpy = forced_align(lp, targets, blank=0)
    from_torch = forced_align(torch.from_numpy(lp).float(), targets, blank=0)
    assert from_numpy.feasible and from_numpy.log_likelihood <= _ctc_total(lp, targets, 0)
    assert from_torch.token_frames == from_numpy.token_frames
    ends = [b for _, b in from_numpy.token_frames]
    assert all(b0 < a1 for b0, (a1, _) in zip(ends, from_numpy.token_frames[1:]))  # tokens in order, no overlap


def test_infeasible_transcript_returns_zero_confidence():
    lp = _random_log_probs(np.random.default_rng(3), 4, 5)
    result = forced_align(lp, [1, 1, 2, 3], blank=0)  # needs 5 frames: 4 tokens + a blank between the 1s
    assert not result.feasible
    assert result.token_frames == [(-1, -1)] * 4
    np.testing.assert_array_equal(result.token_confidence, np.zeros(4))
    assert result.log_likelihood == -np.inf
    assert forced_align(lp, [1, 2, 3, 4], blank=0).feasible  # no repeat: 4 frames suffice
    lp[:, 4] = -np.inf  # long enough, but label 4 has probability 0 on every frame
    assert not forced_align(lp, [1, 2, 3, 4], blank=0).feasible


def test_empty_target_and_bad_ids():
    lp = _random_log_probs(np.random.default_rng(4), 3, 3)
    empty = forced_align(lp, [], blank=0)
    assert empty.feasible and empty.log_likelihood == pytest.approx(lp[:, 0].sum())
    with pytest.raises(ValueError, match="blank"):
        forced_align(lp, [1, 0], blank=0)
    with pytest.raises(ValueError):
        forced_align(lp, [3], blank=0)


def test_oracle_confidence_separates_true_from_wrong_transcript():
    # Log-probs built from a known alignment plus noise: the spoken tokens get high confidence, a wrong
    # transcript forced onto the same frames gets low confidence (and so coverage near zero).
    rng = np.random.default_rng(5)
    vocab, blank = 20, 0
    spoken = [int(x) for x in rng.integers(1, vocab, size=15)]
    frames_per = 3
    logits = rng.normal(scale=1.0, size=(len(spoken) * frames_per * 2, vocab))  # (T, V)
    for k, label in enumerate(spoken):
        start = 2 * k * frames_per
        logits[start, label] += 8.0  # one peaky frame per token, as CTC models emit
        logits[start + 1 : start + 2 * frames_per, blank] += 8.0
    lp = torch.from_numpy(logits).log_softmax(-1).numpy()
    wrong = [int(x) for x in rng.integers(1, vocab, size=15)]
    true_conf = forced_align(lp, spoken, blank).token_confidence
    wrong_conf = forced_align(lp, wrong, blank).token_confidence
    assert np.mean(true_conf >= DEFAULT_THRESHOLD) == 1.0
    assert np.mean(wrong_conf >= DEFAULT_THRESHOLD) < 0.3


# --- CtcAligner -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_ctc_model(seed=0)


def test_tiny_model_is_deterministic_and_offline(tiny):
    model, processor = tiny
    again, _ = tiny_ctc_model(seed=0)
    other, _ = tiny_ctc_model(seed=1)
    first = next(iter(model.state_dict().values()))
    assert torch.equal(first, next(iter(again.state_dict().values())))
    assert not torch.equal(first, next(iter(other.state_dict().values())))
    assert processor.tokenizer.convert_tokens_to_ids(["<pad>", "<unk>", "|"]) == [0, 1, 2]
    assert model.config.vocab_size == len(processor.tokenizer.get_vocab())


def test_encode_drops_oov_and_maps_spaces_to_delimiter(tiny):
    aligner = CtcAligner(*tiny)
    target = aligner.encode("  abc שלום, עולם! ")  # for_scoring: punctuation → space, Latin letters are OOV
    vocab = aligner.tokenizer.get_vocab()
    assert target.ids == [vocab[c] for c in "שלום"] + [vocab["|"]] + [vocab[c] for c in "עולם"]
    assert target.weights.tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert target.oov_chars == 3
    assert "threshold=0.5" in aligner.score_version and "for_scoring" in aligner.score_version


def test_align_batch_matches_single_clips(tiny):
    aligner = CtcAligner(*tiny, batch_size=4)
    rng = np.random.default_rng(6)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 27000, 8000, 20500, 400)]
    texts = ["שלום עולם", "מה נשמע היום", "אב", "hello", "ארוך מדי לשנייה"]
    rows = aligner.align(audio, texts)

    assert [r["frames"] for r in rows] == [49, 84, 24, 64, 1]  # 20 ms frames: conv strides 5·4·4·4 = 320
    assert [r["chars"] for r in rows] == [8, 10, 2, 0, 13]
    assert [r["oov_chars"] for r in rows] == [0, 0, 0, 5, 0]
    assert [r["feasible"] for r in rows] == [True, True, True, True, False]
    for row in rows:
        assert 0.0 <= row["coverage"] <= 1.0 and 0.0 <= row["mean_confidence"] <= 1.0
    assert rows[0]["log_likelihood_per_char"] < 0
    assert rows[3]["coverage"] == 0.0 and rows[3]["log_likelihood_per_char"] is None  # nothing left to align
    assert rows[4]["coverage"] == 0.0 and rows[4]["log_likelihood_per_char"] is None  # 1 frame, 13 letters

    batched = aligner.log_probs(audio)
    for i, clip in enumerate(audio):  # each clip alone: padding in the batch must not change its outputs
        (alone,) = aligner.log_probs([clip])
        np.testing.assert_allclose(batched[i], alone, atol=1e-5)
        (row,) = aligner.align([clip], [texts[i]])
        assert row["coverage"] == pytest.approx(rows[i]["coverage"], abs=1e-5)
        assert row["mean_confidence"] == pytest.approx(rows[i]["mean_confidence"], abs=1e-5)


def test_aligner_rejects_mismatched_inputs(tiny):
    aligner = CtcAligner(*tiny)
    with pytest.raises(ValueError, match="2 clips but 1"):
        aligner.align([np.zeros(1600, np.float32)] * 2, ["א"])
    with pytest.raises(ValueError, match="processor"):
        CtcAligner(tiny[0])


@pytest.mark.parametrize("failing", ["model", "processor"])
def test_string_id_load_failure_is_checkpoint_error(monkeypatch, tiny, failing):
    import transformers

    def offline(name, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")

    def tiny_model(name, **kwargs):
        return tiny[0]

    monkeypatch.setattr(transformers.AutoModelForCTC, "from_pretrained", offline if failing == "model" else tiny_model)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", offline)
    with pytest.raises(CheckpointError, match="'some-org/hebrew-ctc'.*revision 'abc123'.*OSError"):
        CtcAligner("some-org/hebrew-ctc", revision="abc123")


def test_target_lang_loads_adapter_from_local_checkpoint(tmp_path):
    # An MMS-shaped checkpoint built offline: nested per-language vocabulary and adapter.<lang>.safetensors.
    import json

    from safetensors.torch import save_file
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC, Wav2Vec2Processor

    base, processor = tiny_ctc_model("abc")
    heb_vocab = processor.tokenizer.get_vocab() | {c: 6 + i for i, c in enumerate("שלוםע")}
    eng_vocab = processor.tokenizer.get_vocab()
    (tmp_path / "vocab.json").write_text(json.dumps({"eng": eng_vocab, "heb": heb_vocab}), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), target_lang="eng")
    config = base.config
    config.adapter_attn_dim = 8
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config)
    model.save_pretrained(tmp_path / "ckpt")
    Wav2Vec2Processor(processor.feature_extractor, tokenizer).save_pretrained(tmp_path / "ckpt")
    config.vocab_size = len(heb_vocab)
    save_file(
        {k: v.contiguous() for k, v in Wav2Vec2ForCTC(config)._get_adapters().items()},
        tmp_path / "ckpt" / "adapter.heb.safetensors",
    )

    aligner = CtcAligner(str(tmp_path / "ckpt"), target_lang="heb")
    assert aligner.model.lm_head.out_features == len(heb_vocab) and aligner.model.target_lang == "heb"
    assert aligner.encode("שלום").ids == [heb_vocab[c] for c in "שלום"]
    (row,) = aligner.align([np.zeros(16000, np.float32)], ["שלום עולמי"])
    assert row["chars"] == 7 and row["oov_chars"] == 2  # מ and י are not in the toy Hebrew vocabulary
    with pytest.raises(CheckpointError, match="'xyz'"):
        CtcAligner(str(tmp_path / "ckpt"), target_lang="xyz")


# --- learning: coverage separates true from wrong transcripts on a model that has heard the clips ------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model trained (CTC, ≤ 160 steps, ~10 s CPU) on 8 synthesised 2-3 word Hebrew clips. Not the shared
    `synth_corpus`: on its 8 clean clips of 3-8 words the training takes 2.5 times as long (measured 18 s against
    7 s), and synthesising these 8 takes 0.1 s."""
    from caspi.data.cuts import cut_text, read_manifest
    from caspi.data.text import for_scoring

    out = tmp_path_factory.mktemp("synth")
    summary = synthesize_corpus(out, n_train=8, n_eval=0, seed=0, error_rate=0.0, min_words=2, max_words=3)
    cuts = read_manifest(summary.train_manifest)
    audio = [cut.load_audio()[0].astype(np.float32) for cut in cuts]
    texts = [for_scoring(cut_text(cut)) for cut in cuts]

    model, processor = tiny_ctc_model(seed=0)
    inputs = processor.feature_extractor(audio, sampling_rate=16000, padding=True, return_tensors="pt")
    ids = [processor.tokenizer(t).input_ids for t in texts]
    labels = torch.full((len(ids), max(map(len, ids))), -100)  # -100: ignored by the CTC loss
    for i, row in enumerate(ids):
        labels[i, : len(row)] = torch.tensor(row)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        model.train()
        for _ in range(160):  # ~90 steps in practice
            loss = model(inputs["input_values"], attention_mask=inputs["attention_mask"], labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if loss.item() < 0.7:  # past the all-blank plateau: characters are emitted where they are spoken
                break
    return model.eval(), processor, audio, texts


@pytest.mark.espeak
def test_coverage_separates_true_from_wrong_transcripts(trained):
    model, processor, audio, texts = trained
    aligner = CtcAligner(model, processor, batch_size=3)
    true = aligner.align(audio, texts)
    wrong = aligner.align(audio, texts[1:] + texts[:1])  # each clip with another clip's transcript
    wins = sum(t["coverage"] > w["coverage"] for t, w in zip(true, wrong))
    assert wins >= 6, (true, wrong)
    assert np.mean([t["coverage"] for t in true]) > 0.5 > np.mean([w["coverage"] for w in wrong])
    assert all(t["feasible"] and t["oov_chars"] == 0 for t in true)

    for i in (0, 5):  # the trained model too: a clip alone scores as it does inside a padded batch
        (alone,) = aligner.align([audio[i]], [texts[i]])
        assert alone["coverage"] == pytest.approx(true[i]["coverage"], abs=1e-5)
