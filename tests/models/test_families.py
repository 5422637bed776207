"""Model families on tiny random models of the real architectures: inputs, labels, loss, decoding, save/load."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caspi.errors import CheckpointError, ConfigError, DataError
from caspi.models import family_names, family_of, get_family
from caspi.models.families import from_pretrained_or_raise
from caspi.models.qwen3_asr import CHAT_TEMPLATE
from caspi.models.tokenizer import train_unicode_bpe
from caspi.models.unfreeze import apply_trainable, trainable_names
from caspi.testing import tone

torch.set_num_threads(1)

SR = 16_000
# Different lengths on purpose: padding must not move the label span (Qwen3-ASR issue #70).
TEXTS = ["שלום עולם", "מה שלומך היום? הכל טוב, תודה.", "כן"]


AUDIO = [tone(1.0, 300.0), tone(2.7, 1200.0), tone(0.3, 2500.0)]  # 0.3 s: under the 0.5 s minimum, zero-padded


@pytest.fixture(scope="module")
def qwen():
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=0, size="xs")
    model.eval()  # dropout is 0 anyway; eval makes the intent explicit for loss comparisons
    return family, model, processor


@pytest.fixture(scope="module")
def whisper():
    family = get_family("whisper")
    model, processor = family.tiny(TEXTS, seed=0, size="xs")
    model.eval()
    return family, model, processor


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per row (B,), over positions whose label is not -100."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")  # (B, L-1)
    mask = shift_labels != -100
    return (ce * mask).sum(1) / mask.sum(1)


# --- registry --------------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_family():
    assert family_names() == ["qwen3_asr", "whisper"]
    with pytest.raises(ConfigError, match="qwen3_asr, whisper"):
        get_family("wav2vec2")


def test_family_of_model(qwen, whisper):
    assert family_of(qwen[1]).name == "qwen3_asr"
    assert family_of(whisper[1]).name == "whisper"


# --- tokenizer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [None, 80])
def test_unicode_bpe_round_trips_text(vocab_size):
    texts = ["שלום עולם, מה נשמע?", "  רווח כפול  ובסוף ", "שורה\nשנייה"]
    tok = train_unicode_bpe(texts * 5, ["<|endoftext|>"], plain_added_tokens=["<asr_text>"], vocab_size=vocab_size)
    for text in texts:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    if vocab_size is None:  # character tokenizer: one token per character (spaces fold into the next token)
        assert len(tok.encode("שלום").ids) == 4
    assert tok.encode("<asr_text>").ids == [tok.token_to_id("<asr_text>")]


def test_unicode_bpe_rejects_too_small_vocab():
    with pytest.raises(ConfigError, match="vocab_size"):
        train_unicode_bpe(["שלום עולם"], ["<a>", "<b>"], vocab_size=3)


# --- Qwen3-ASR -------------------------------------------------------------------------------------------------


def test_qwen_template_renders_upstream_prompt(qwen):
    _, _, processor = qwen
    # Upstream's expected prompt (transformers tests/models/qwen3_asr/test_processing_qwen3_asr.py).
    expected = (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages = [{"role": "user", "content": [{"type": "audio", "audio": AUDIO[0]}]}]
    rendered = processor.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_qwen_labels_cover_exactly_the_assistant_span(qwen, padding_side):
    family, _, processor = qwen
    tok = processor.tokenizer
    batch = family.build_inputs(processor, AUDIO, TEXTS, padding_side=padding_side)
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == attn.shape
    lengths = attn.sum(1)
    assert len(set(lengths.tolist())) == 3  # rows really differ in length, so padding is exercised
    pad_col = 0 if padding_side == "left" else -1
    assert (attn[:, pad_col] == 0).any()  # the shortest row is padded on the requested side
    for row, text in enumerate(TEXTS):
        keep = labels[row] != -100
        assert tok.decode(labels[row][keep], skip_special_tokens=False) == f"language Hebrew<asr_text>{text}<|im_end|>"
        assert torch.equal(labels[row][keep], ids[row][keep])  # labels are the input tokens, unshifted
        positions = keep.nonzero().squeeze(1)
        assert torch.equal(positions, torch.arange(positions[0], positions[-1] + 1))  # one contiguous span
        # The prompt before the span is "…<|im_start|>assistant\n"; the newline after <|im_end|> has no loss.
        assert tok.decode(ids[row][: positions[0]], skip_special_tokens=True).endswith("assistant\n")
        after = ids[row][positions[-1] + 1 :][attn[row][positions[-1] + 1 :] == 1]
        assert tok.decode(after, skip_special_tokens=False) == "\n"
    n_audio = (ids == processor.audio_token_id).sum(1)
    assert (n_audio > 0).all()


def test_qwen_features_shape_and_dtype(qwen):
    family, model, processor = qwen
    batch = family.build_inputs(processor, AUDIO, TEXTS, dtype=torch.bfloat16)
    feats = batch["input_features"]
    assert feats.dtype == torch.bfloat16
    assert feats.shape[:2] == (3, 128) and feats.shape[-1] % 100 == 0
    assert batch["input_features_mask"].shape == (3, feats.shape[-1])
    assert batch["input_ids"].dtype == torch.long
    half = copy.deepcopy(model).to(torch.bfloat16)  # a bf16 model takes the cast features (fp32 ones raise)
    with torch.no_grad():
        assert torch.isfinite(half(**batch).loss)
    assert len(family.decode(half, processor, AUDIO[:1], max_new_tokens=2)) == 1


def test_qwen_row_loss_is_independent_of_padding(qwen):
    family, model, processor = qwen
    per_side = {}
    with torch.no_grad():
        for side in ("left", "right"):
            batch = family.build_inputs(processor, AUDIO, TEXTS, padding_side=side)
            out = model(**batch)
            assert torch.isfinite(out.loss)
            per_side[side] = row_losses(out.logits, batch["labels"])
        alone = torch.stack([model(**family.build_inputs(processor, [a], [t])).loss for a, t in zip(AUDIO, TEXTS)])
    torch.testing.assert_close(per_side["left"], per_side["right"], rtol=1e-4, atol=1e-5)
    # Every row, alone and unpadded, scores the same as inside either padded batch: the shorter clips too, whose
    # audio the feature extractor would pad to the longest (one more mel frame, silence's log-mel floor after it).
    torch.testing.assert_close(per_side["left"], alone, rtol=1e-4, atol=1e-5)
    # and the rows differ from each other (the comparison above is not between constants)
    assert (per_side["left"].max() - per_side["left"].min()) > 1e-3


def test_qwen_clip_inputs_and_transcript_do_not_depend_on_batch_mates():
    family = get_family("qwen3_asr")
    # The speech-like front-end init: with the default one a random model's output hardly depends on its audio, and
    # the comparison below would pass whatever the audio tokens were (measured: 1e-7 apart before the fix, 1e-3 here).
    model, processor = family.tiny(TEXTS, seed=0, size="xs", audio_init="he")
    model.eval()
    odd = tone(1.2345, 700.0)  # 19,752 samples: not a whole number of 160-sample hops
    long = tone(3.3, 900.0)
    alone = family.build_inputs(processor, [odd], None)
    batch = family.build_inputs(processor, [odd, long], None, padding_side="left")
    frames = int(alone["input_features_mask"].sum())
    assert frames == 19_752 // 160  # the extractor's own count for the clip alone
    assert int(batch["input_features_mask"][0].sum()) == frames
    torch.testing.assert_close(batch["input_features"][0, :, :alone["input_features"].shape[-1]],
                               alone["input_features"][0], rtol=0, atol=0)
    assert not batch["input_features"][0, :, frames:].any()  # zeros after the clip, as alone
    ids = alone["input_ids"][0]
    assert torch.equal(batch["input_ids"][0, -ids.shape[0]:], ids)  # left-padded: the same prompt at the end
    # Generation: the scores of every step, not only the tokens (a random model writes one token over and over).
    with torch.no_grad():
        one, two = (model.generate(**b, max_new_tokens=3, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True).scores for b in (alone, batch))
    torch.testing.assert_close(torch.stack([s[0] for s in two]), torch.stack([s[0] for s in one]),
                               rtol=0, atol=1e-5)


def test_qwen_backward_and_generate(qwen):
    family, model, processor = qwen
    model.zero_grad()
    batch = family.build_inputs(processor, AUDIO, TEXTS, padding_side="right")
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["model.audio_tower.conv2d1.weight"].abs().sum() > 0  # the loss reaches the audio front end
    model.zero_grad()
    prompt = family.build_inputs(processor, AUDIO, None, padding_side="left")
    assert "labels" not in prompt
    for row in prompt["input_ids"]:
        assert processor.tokenizer.decode(row).endswith("<|im_start|>assistant\nlanguage Hebrew<asr_text>")
    hyps = family.decode(model, processor, AUDIO, max_new_tokens=4)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)


def test_qwen_tiny_learns_two_clips_and_decodes_them():
    """End to end: labels, loss and decoding agree, so a tiny model overfits two clips and reads them back."""
    family = get_family("qwen3_asr")
    texts, audio = TEXTS[:2], AUDIO[:2]
    model, processor = family.tiny(texts, seed=0, size="xs", audio_init="he")
    batch = family.build_inputs(processor, audio, texts, padding_side="left")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert family.decode(model, processor, audio, max_new_tokens=40) == texts


def test_qwen_he_init_lifts_audio_frontend_output():
    family = get_family("qwen3_asr")
    rms = {}
    for init in ("default", "he"):
        model, processor = family.tiny(TEXTS, seed=0, size="xs", audio_init=init)
        seen = {}
        # The encoder adds positions in place right after conv_out: clone the output inside the hook.
        hook = model.model.audio_tower.conv_out.register_forward_hook(
            lambda mod, args, out, seen=seen: seen.__setitem__("out", out.detach().clone())
        )
        with torch.no_grad():
            model(**family.build_inputs(processor, AUDIO[:1], TEXTS[:1]))
        hook.remove()
        rms[init] = seen["out"].pow(2).mean().sqrt().item()
    assert rms["default"] < 0.01  # the starvation REFERENCE.md measured (positions have RMS ~0.7)
    assert rms["he"] > 0.1


def test_qwen_tiny_is_deterministic_in_seed():
    family = get_family("qwen3_asr")
    a, _ = family.tiny(TEXTS, seed=3)
    b, _ = family.tiny(TEXTS, seed=3)
    c, _ = family.tiny(TEXTS, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    key = "model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(sa[key], sc[key])


def test_qwen_size_s_runs():
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, size="s")
    n = sum(p.numel() for p in model.parameters())
    assert 2_000_000 < n < 4_000_000  # REFERENCE.md's "S": ~2.9 M with a ~100-token vocabulary
    with torch.no_grad():
        assert torch.isfinite(model(**family.build_inputs(processor, AUDIO[:2], TEXTS[:2])).loss)


def test_qwen_processor_and_model_round_trip(qwen, tmp_path):
    family, model, processor = qwen
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_proc = family.load(str(tmp_path), dtype=torch.float32)
    assert type(loaded_proc).__name__ == "Qwen3ASRProcessor"
    assert loaded_proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_proc.audio_token == "<|audio_pad|>" and loaded_proc.audio_token_id == processor.audio_token_id
    a = family.build_inputs(processor, AUDIO, TEXTS, padding_side="left")
    b = family.build_inputs(loaded_proc, AUDIO, TEXTS, padding_side="left")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        torch.testing.assert_close(model(**a).logits, loaded.eval()(**b).logits)


def test_qwen_load_refuses_an_unconvertible_original_layout_and_other_families(qwen, whisper, tmp_path,
                                                                              monkeypatch):
    # An original-layout folder is converted on load (tests/models/test_convert.py); one that cannot be converted
    # (here a thinker_config without its sub-configs beside native tensors) is refused, and nothing is cached.
    monkeypatch.setenv("CASPI_CACHE_DIR", str(tmp_path / "cache"))
    family, model, processor = qwen
    model.save_pretrained(tmp_path / "orig")
    processor.save_pretrained(tmp_path / "orig")
    config_file = tmp_path / "orig" / "config.json"
    config = json.loads(config_file.read_text())
    config["thinker_config"] = {"audio_config": {}}
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="thinker_config.text_config is missing"):
        family.load(str(tmp_path / "orig"))
    assert not (tmp_path / "cache").exists()
    whisper[1].save_pretrained(tmp_path / "wh")
    with pytest.raises(CheckpointError, match="not Qwen3-ASR"):
        family.load(str(tmp_path / "wh"))


def test_load_errors_name_the_id(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CheckpointError, match="no-such-model"):
        get_family("qwen3_asr").load(str(missing))

    def offline(name, revision=None, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    with pytest.raises(CheckpointError, match=r"'Qwen/Qwen3-ASR-1.7B-hf' at revision 'main'.*network"):
        from_pretrained_or_raise(offline, "qwen3_asr", "Qwen/Qwen3-ASR-1.7B-hf", "main")


def test_build_inputs_rejects_bad_batches(qwen):
    family, _, processor = qwen
    with pytest.raises(DataError, match="clip 1"):
        family.build_inputs(processor, [AUDIO[0], np.zeros((2, 100), np.float32)], None)
    with pytest.raises(DataError, match="2 texts for 3 clips"):
        family.build_inputs(processor, AUDIO, TEXTS[:2])
    with pytest.raises(DataError, match="NaN"):
        family.build_inputs(processor, [np.full(100, np.nan, np.float32)], None)
    with pytest.raises(ConfigError, match="padding_side"):
        family.build_inputs(processor, AUDIO, TEXTS, padding_side="middle")


def test_reference_configs_are_the_published_sizes():
    q = get_family("qwen3_asr")
    for size, (d_model, hidden) in {"1.7B": (1024, 2048), "0.6B": (896, 1024)}.items():
        config = q.reference_config(size)
        q.check_config(config, size)  # projector output = LLM width
        assert (config.audio_config.d_model, config.text_config.hidden_size) == (d_model, hidden)
    with pytest.raises(ConfigError, match="1.7B"):
        q.reference_config("7B")


# --- Whisper ---------------------------------------------------------------------------------------------------


def test_whisper_labels(whisper):
    family, _, processor = whisper
    tok = processor.tokenizer
    batch = family.build_inputs(processor, AUDIO, TEXTS)
    assert batch["input_features"].shape == (3, 128, 3000)
    labels = batch["labels"]
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for row, text in enumerate(TEXTS):
        keep = labels[row] != -100
        assert tok.decode(labels[row][keep], skip_special_tokens=False) == (
            f"<|he|><|transcribe|><|notimestamps|>{text}<|endoftext|>"
        )
        assert labels[row][keep][-1] == eot  # end-of-text keeps its loss although it is also the pad token
        positions = keep.nonzero().squeeze(1)
        assert positions[0] == 0 and positions[-1] == keep.sum() - 1  # right-padded
    assert (labels == -100).any()


def test_whisper_forward_backward_generate(whisper):
    family, model, processor = whisper
    model.zero_grad()
    batch = family.build_inputs(processor, AUDIO, TEXTS)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.model.encoder.conv1.weight.grad.abs().sum() > 0
    model.zero_grad()
    # Generation conditions on the prefix the labels train (<|startoftranscript|><|he|><|transcribe|>
    # <|notimestamps|>): its first-step logits are the teacher-forced logits after that prefix.
    with torch.no_grad():
        out = model.generate(
            input_features=batch["input_features"][:1],
            language="he",
            task="transcribe",
            max_new_tokens=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
        forced = model(input_features=batch["input_features"][:1], labels=batch["labels"][:1]).logits  # (1, L, V)
    torch.testing.assert_close(out.logits[0][0], forced[0, 3], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(forced[0, 3], forced[0, 2], atol=1e-4)  # positions differ: the check can fail
    hyps = family.decode(model, processor, AUDIO, max_new_tokens=3)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)


def test_whisper_processor_round_trip(whisper, tmp_path):
    family, model, processor = whisper
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_proc = family.load(str(tmp_path), dtype=torch.float32)
    assert loaded_proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    a = family.build_inputs(processor, AUDIO, TEXTS)
    b = family.build_inputs(loaded_proc, AUDIO, TEXTS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.generation_config.lang_to_id["<|he|>"] == model.generation_config.lang_to_id["<|he|>"]


def test_whisper_rejects_clips_over_30_s(whisper):
    family, _, processor = whisper
    with pytest.raises(DataError, match="clip 0 is 31.00 s"):
        family.build_inputs(processor, [np.zeros(31 * SR, np.float32) + 0.01], ["טקסט"])


# --- the recipe's model.language and the family's audio window --------------------------------------------------


class GenerateSpy:
    """Wraps `model.generate` and records the keyword arguments of each call."""

    def __init__(self, model):
        self.model, self.calls, self.original = model, [], model.generate

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.original(*args, **kwargs)


def test_qwen_language_sets_the_prefill_tag():
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=0, size="xs", language="English")  # the tag's letters join the vocab
    tok = processor.tokenizer
    english = family.build_inputs(processor, AUDIO[:1], TEXTS[:1], language="English")
    hebrew = family.build_inputs(processor, AUDIO[:1], TEXTS[:1])
    span = english["labels"][0][english["labels"][0] != -100]
    assert tok.decode(span) == f"language English<asr_text>{TEXTS[0]}<|im_end|>"
    assert tok.unk_token_id not in english["input_ids"][0].tolist()
    assert not torch.equal(english["input_ids"], hebrew["input_ids"])  # the tokens change with the language
    prompt = family.build_inputs(processor, AUDIO[:1], None, padding_side="left", language="English")
    assert tok.decode(prompt["input_ids"][0]).endswith("assistant\nlanguage English<asr_text>")
    spy = GenerateSpy(model)
    model.generate = spy
    try:
        family.decode(model, processor, AUDIO[:1], max_new_tokens=2, language="English", num_beams=2)
    finally:
        del model.generate
    (call,) = spy.calls
    assert call["num_beams"] == 2
    assert tok.decode(call["input_ids"][0]).endswith("language English<asr_text>")


def test_whisper_language_sets_the_language_token(whisper):
    family, model, processor = whisper
    tok = processor.tokenizer
    labels = family.build_inputs(processor, AUDIO[:1], TEXTS[:1], language="English")["labels"][0]
    assert tok.decode(labels[labels != -100]).startswith("<|en|><|transcribe|><|notimestamps|>")
    labels = family.build_inputs(processor, AUDIO[:1], TEXTS[:1])["labels"][0]  # default: Hebrew
    assert tok.decode(labels[labels != -100]).startswith("<|he|><|transcribe|>")
    spy = GenerateSpy(model)
    model.generate = spy
    try:
        family.decode(model, processor, AUDIO[:1], max_new_tokens=2, language="ar", num_beams=2)
    finally:
        del model.generate
    (call,) = spy.calls
    assert (call["language"], call["num_beams"]) == ("ar", 2)


def test_language_tags_and_audio_windows_per_family():
    whisper, qwen = get_family("whisper"), get_family("qwen3_asr")
    assert [whisper.language_tag(x) for x in (None, "Hebrew", "hebrew", "he", "<|he|>", "English")] == [
        "he", "he", "he", "he", "he", "en"]
    with pytest.raises(ConfigError, match="model.language: 'Klingon'"):
        whisper.language_tag("Klingon")
    assert (qwen.language_tag(None), qwen.language_tag(" Yiddish ")) == ("Hebrew", "Yiddish")
    for bad in ("", "a\nb", "x<asr_text>"):
        with pytest.raises(ConfigError, match="model.language"):
            qwen.language_tag(bad)
    assert (whisper.max_audio_seconds, qwen.max_audio_seconds) == (30.0, None)


@pytest.mark.parametrize("name", ["qwen", "whisper"])
def test_decode_gives_the_model_its_mode_back_also_when_generation_fails(name, request, monkeypatch):
    family, model, processor = request.getfixturevalue(name)
    model.train()
    modes = []

    def failing_generate(*args, **kwargs):
        modes.append(model.training)
        raise RuntimeError("out of memory in generate")

    monkeypatch.setattr(model, "generate", failing_generate)
    with pytest.raises(RuntimeError, match="out of memory"):
        family.decode(model, processor, AUDIO[:1], max_new_tokens=2)
    assert modes == [False]  # generation ran in eval mode
    assert model.training  # and the training mode came back despite the error
    model.eval()


def test_frame_lengths_count_the_mel_frames_of_real_audio():
    lens = torch.tensor([16000, 16001, 80])  # samples at 16 kHz: 1 s, one sample more, half a frame
    whisper = get_family("whisper").frame_lengths({"input_features": torch.zeros(3, 80, 3000)}, lens)
    assert whisper.tolist() == [100, 101, 1]  # hop 160 samples, a partial frame counts
    clamped = get_family("whisper").frame_lengths({"input_features": torch.zeros(3, 80, 100)}, lens)
    assert clamped.tolist() == [100, 100, 1]
    mask = torch.tensor([[1] * 100 + [0] * 100, [1] * 101 + [0] * 99, [1] + [0] * 199])
    qwen = get_family("qwen3_asr").frame_lengths({"input_features_mask": mask}, lens)
    assert qwen.tolist() == [100, 101, 1]  # the processor's mask of real frames


def test_checkpointing_records_no_frozen_audio():
    """Strategy B (projector + top LLM layers + LM head) trains no audio layer: with checkpointing on, autograd must
    not record the audio tower (transformers' input-grad hooks would make it), and the gradients must be those of
    training without checkpointing."""
    family = get_family("qwen3_asr")
    spec = {"projector": {}, "llm_top": {"top": 1}, "lm_head": {}}  # xs has 2 LLM layers: the bottom one frozen
    grads, audio_requires_grad = {}, {}
    for checkpointing in (False, True):
        model, processor = family.tiny(TEXTS, seed=0, size="xs")
        apply_trainable(model, trainable_names(model, spec))
        if checkpointing:
            family.enable_gradient_checkpointing(model)
        model.train()
        seen = {}
        model.model.audio_tower.register_forward_hook(
            lambda mod, args, out, seen=seen: seen.__setitem__("grad", out.last_hidden_state.requires_grad))
        model(**family.build_inputs(processor, AUDIO, TEXTS)).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        audio_requires_grad[checkpointing] = seen["grad"]
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert audio_requires_grad == {False: False, True: False}
    assert len(grads[True]) > 10 and all(g.abs().sum() > 0 for g in grads[True].values())
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=0, atol=0, msg=name)
    # transformers' behaviour, for contrast: its hook on the tower's input embedding (conv2d1) makes the frozen
    # tower's output require grad.
    model.enable_input_require_grads()
    model(**family.build_inputs(processor, AUDIO, TEXTS))
    assert seen["grad"] is True


def test_repetition_guard_options_only_when_on():
    from caspi.models.families import repetition_guard

    assert repetition_guard() == {}  # off: generate keeps the model's own generation_config
    assert repetition_guard(3, 1.2) == {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2}
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        repetition_guard(-1)
    with pytest.raises(ConfigError, match="repetition_penalty"):
        repetition_guard(0, 0.0)


def _generated(model, monkeypatch) -> list:
    """Spy on `model.generate`: the list each call appends (its kwargs, its output ids) to."""
    calls, real = [], model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(model, "generate", spy)
    return calls


def _repeated_bigrams(rows: torch.Tensor, start: int, stop_ids: set[int], length: int = 20) -> int:
    """Repeated token bigrams in the first `length` generated tokens of each row (from `start`, up to its first stop
    token), summed."""
    repeats = 0
    for row in rows.tolist():
        ids = row[start:start + length]
        ids = ids[: next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))]
        grams = list(zip(ids, ids[1:]))
        repeats += len(grams) - len(set(grams))
    return repeats


@pytest.mark.parametrize("name", ["qwen", "whisper"])
def test_repetition_guard_reaches_generate(name, request, monkeypatch):
    """A random tiny model loops (it writes the same few tokens until max_new_tokens); with no_repeat_ngram_size=2
    no token bigram of what it writes repeats, a repetition penalty changes what it writes, and the defaults pass
    nothing (generation exactly as before)."""
    family, model, processor = request.getfixturevalue(name)
    calls = _generated(model, monkeypatch)
    tok = processor.tokenizer
    stop = {tok.eos_token_id, tok.pad_token_id}

    def written(**guard):
        calls.clear()
        family.decode(model, processor, AUDIO, max_new_tokens=24, **guard)
        kwargs, out = calls[0]
        # Qwen3-ASR returns prompt + new tokens. Whisper's random model writes timestamp tokens, and its generate
        # (transformers 5) then returns the new tokens only, more of them than max_new_tokens (456 for 24,
        # measured; under the guard one 23-token run repeated): only the first 20 tokens are compared.
        start = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else 0
        return kwargs, out, start

    kwargs, plain, start = written(no_repeat_ngram_size=0, repetition_penalty=1.0)
    assert "no_repeat_ngram_size" not in kwargs and "repetition_penalty" not in kwargs
    assert _repeated_bigrams(plain, start, stop) > 0  # the check can fail: unguarded, the random model repeats
    kwargs, guarded, _ = written(no_repeat_ngram_size=2)
    assert kwargs["no_repeat_ngram_size"] == 2 and _repeated_bigrams(guarded, start, stop) == 0
    kwargs, penalised, _ = written(repetition_penalty=5.0)
    assert kwargs["repetition_penalty"] == 5.0 and not torch.equal(penalised, plain)


@pytest.mark.parametrize("name", ["qwen", "whisper"])
def test_beam_search_decodes_with_both_families(name, request):
    family, model, processor = request.getfixturevalue(name)
    greedy = family.decode(model, processor, AUDIO, max_new_tokens=6)
    beam = family.decode(model, processor, AUDIO, max_new_tokens=6, num_beams=5)
    assert len(beam) == len(AUDIO) and all(isinstance(h, str) for h in beam)
    # Beam 5's best sequence scores at least greedy's: with one beam it must equal greedy.
    assert family.decode(model, processor, AUDIO, max_new_tokens=6, num_beams=1) == greedy
