"""Parameter groups, the trainable applier, optimizer groups across phases, LoRA, and meta-device counts."""

from __future__ import annotations

import pytest
import torch

from caspi.errors import ConfigError
from caspi.models import get_family
from caspi.models.unfreeze import (
    apply_lora,
    apply_trainable,
    group_table,
    lora_modules,
    optimizer_param_groups,
    rebuild_optimizer,
    trainable_names,
)
from caspi.testing import meta_model

torch.set_num_threads(1)

TEXTS = ["שלום עולם", "מה שלומך היום?"]

# One Qwen3 decoder layer and one Qwen3-ASR audio encoder layer, tensor by tensor (transformers 5.23 names).
LLM_LAYER = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
]  # fmt: skip
AUDIO_LAYER = [
    f"{m}.{p}"
    for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
              "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
    for p in ("weight", "bias")
]  # fmt: skip


@pytest.fixture()
def qwen():
    family = get_family("qwen3_asr")
    model, processor = family.tiny(TEXTS, seed=0, size="xs")  # 2 audio layers, 2 LLM layers
    return family, model, processor


@pytest.fixture(scope="module")
def qwen_meta_1p7b():
    return meta_model("qwen3_asr", "1.7B")


def sorted_names(names):
    return sorted(names, key=lambda n: (len(n), n))


# --- resolving groups ------------------------------------------------------------------------------------------


def test_trainable_names_exact_sets_on_two_layer_model(qwen):
    _, model, _ = qwen
    spec = {"projector": {}, "llm_top": {"top": 1}, "audio_top": {"top": 1}, "lm_head": {}}
    names = trainable_names(model, spec)
    assert list(names) == ["projector", "llm_top", "audio_top", "lm_head"]
    assert names["projector"] == [
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_1.bias",
        "model.multi_modal_projector.linear_2.weight",
        "model.multi_modal_projector.linear_2.bias",
    ]
    assert sorted(names["llm_top"]) == sorted(f"model.language_model.layers.1.{t}" for t in LLM_LAYER)
    assert sorted(names["audio_top"]) == sorted(f"model.audio_tower.layers.1.{t}" for t in AUDIO_LAYER)
    # Tied: the head has no name of its own in named_parameters(); the group resolves to the embeddings.
    assert names["lm_head"] == ["model.language_model.embed_tokens.weight"]


def test_layer_selectors(qwen):
    _, model, _ = qwen
    bottom = trainable_names(model, {"audio_layers": {"bottom": 1}})["audio_layers"]
    assert {n.split(".")[3] for n in bottom} == {"0"}
    listed = trainable_names(model, {"llm_layers": {"layers": [0, 1]}})["llm_layers"]
    every = trainable_names(model, {"llm_layers": {}})["llm_layers"]
    assert listed == every and len(every) == 2 * len(LLM_LAYER)
    front = trainable_names(model, {"audio_frontend": {}})["audio_frontend"]
    assert front == [
        "model.audio_tower.conv2d1.weight", "model.audio_tower.conv2d1.bias",
        "model.audio_tower.conv2d2.weight", "model.audio_tower.conv2d2.bias",
        "model.audio_tower.conv2d3.weight", "model.audio_tower.conv2d3.bias",
        "model.audio_tower.conv_out.weight",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"decoder": {}}, r"unknown parameter group 'decoder'.*known groups: audio_frontend, .*projector"),
        ({"llm_top": {"top": 3}}, r"top 3 but the model has only 2"),
        ({"llm_top": {}}, r"'llm_top' needs \{'top': N\}"),
        ({"projector": {"top": 1}}, r"'projector' takes no options; unknown: top"),
        ({"llm_layers": {"top": 1, "bottom": 1}}, r"not top, bottom"),
        ({"llm_layers": {"layers": [5]}}, r"out of range"),
        ({"llm_layers": {"top": 0}}, r"positive integer"),
        ({"llm_layers": {}, "llm_top": {"top": 1}}, r"'llm_layers' and 'llm_top' both claim"),
        ({"lora": {}}, r"'lora' .* matched no parameter.*apply LoRA first"),
    ],
)
def test_bad_specs_raise_config_errors(qwen, spec, message):
    _, model, _ = qwen
    with pytest.raises(ConfigError, match=message):
        trainable_names(model, spec)


def test_apply_trainable_sets_exactly_the_named_parameters(qwen):
    family, model, processor = qwen
    names = trainable_names(model, {"projector": {}, "llm_top": {"top": 1}})
    apply_trainable(model, names)
    wanted = {n for group in names.values() for n in group}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == wanted
    model(**family.build_inputs(processor, [torch.zeros(16000).numpy() + 0.1], TEXTS[:1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == wanted
    with pytest.raises(ConfigError, match="not parameters"):
        apply_trainable(model, {"nope.weight"})


# --- table and optimizer ---------------------------------------------------------------------------------------


def test_group_table_rows_and_tied_note(qwen):
    _, model, _ = qwen
    names = trainable_names(model, {"projector": {}, "lm_head": {}})
    table = group_table(model, names, {"projector": 1e-3, "lm_head": 1e-4})
    params = dict(model.named_parameters())
    emb = params["model.language_model.embed_tokens.weight"].numel()
    proj = sum(params[n].numel() for n in names["projector"])
    assert [(r.group, r.tensors, r.params, r.lr) for r in table.rows] == [
        ("projector", 4, proj, 1e-3),
        ("lm_head", 1, emb, 1e-4),
    ]
    assert table.trainable == proj + emb and table.total == sum(p.numel() for p in params.values())
    assert table.notes == [f"lm_head is tied to embed_tokens: training it trains the input embeddings ({emb:,} params)"]
    assert "lm_head is tied" in table.render()
    frozen_head = group_table(model, trainable_names(model, {"projector": {}}))
    assert frozen_head.notes[0].startswith("lm_head is tied to embed_tokens: both stay frozen")
    with pytest.raises(ConfigError, match="no learning rate for parameter group 'lm_head'"):
        group_table(model, names, {"projector": 1e-3})


def test_optimizer_param_groups_split_no_decay(qwen):
    _, model, _ = qwen
    names = trainable_names(model, {"projector": {}, "llm_top": {"top": 1}})
    groups = optimizer_param_groups(model, names, {"projector": 1e-3, "llm_top": 1e-4}, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["projector", "projector.no_decay", "llm_top", "llm_top.no_decay"]
    assert by_name["projector"]["param_names"] == [
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_2.weight",
    ]
    assert by_name["projector.no_decay"]["weight_decay"] == 0.0 and by_name["projector"]["weight_decay"] == 0.1
    assert all(p.ndim < 2 for p in by_name["llm_top.no_decay"]["params"])
    assert by_name["llm_top"]["lr"] == by_name["llm_top.no_decay"]["lr"] == 1e-4
    plain = optimizer_param_groups(model, names, 1e-3)
    assert [g["name"] for g in plain] == ["projector", "llm_top"]


def test_rebuild_optimizer_keeps_state_of_parameters_that_stay(qwen):
    family, model, processor = qwen
    batch = family.build_inputs(processor, [torch.zeros(16000).numpy() + 0.1], TEXTS[:1])

    def steps(optimizer, n=2):
        for _ in range(n):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()

    phase1 = trainable_names(model, {"projector": {}})
    apply_trainable(model, phase1)
    opt = torch.optim.AdamW(optimizer_param_groups(model, phase1, 1e-3), betas=(0.8, 0.95), eps=1e-7)
    steps(opt)
    proj_w = dict(model.named_parameters())["model.multi_modal_projector.linear_1.weight"]
    old_state = opt.state[proj_w]
    snapshot = {k: v.clone() for k, v in old_state.items()}

    phase2 = trainable_names(model, {"projector": {}, "llm_top": {"top": 1}})
    apply_trainable(model, phase2)
    new = rebuild_optimizer(opt, model, phase2, {"projector": 1e-3, "llm_top": 5e-4})
    assert new is not opt and type(new) is torch.optim.AdamW
    assert new.defaults["betas"] == (0.8, 0.95) and new.defaults["eps"] == 1e-7
    assert [g["name"] for g in new.param_groups] == ["projector", "llm_top"]
    assert new.param_groups[1]["lr"] == 5e-4
    kept = new.state[proj_w]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert kept[key] is old_state[key]  # the very same tensors
        assert torch.equal(kept[key], snapshot[key])
    new_param = dict(model.named_parameters())["model.language_model.layers.1.mlp.up_proj.weight"]
    assert new_param not in new.state
    steps(new, 1)
    assert new.state[proj_w]["step"].item() == 3 and new.state[new_param]["step"].item() == 1

    phase3 = trainable_names(model, {"llm_top": {"top": 1}})
    apply_trainable(model, phase3)
    third = rebuild_optimizer(new, model, phase3, 1e-4)
    assert proj_w not in third.state  # state of parameters that leave is dropped
    assert third.state[new_param]["exp_avg"] is new.state[new_param]["exp_avg"]


# --- LoRA ------------------------------------------------------------------------------------------------------


def test_lora_only_on_the_llm(qwen):
    family, model, processor = qwen
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    adapted = lora_modules(peft_model)
    assert len(adapted) == 2 * 7  # 2 LLM layers × (q, k, v, o, gate, up, down)
    assert all(".language_model.layers." in n for n in adapted)
    assert not any("audio_tower" in n for n, _ in peft_model.named_parameters() if "lora_" in n)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    # The adapters get gradients through a real forward/backward.
    peft_model(**family.build_inputs(processor, [torch.zeros(16000).numpy() + 0.1], TEXTS[:1])).loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)
    # Groups work on the wrapped model: adapters plus the full projector.
    names = trainable_names(peft_model, {"lora": {}, "projector": {}})
    assert set(names["lora"]) == trainable
    assert names["projector"][0] == "base_model.model.model.multi_modal_projector.linear_1.weight"
    apply_trainable(peft_model, names)
    assert sum(p.requires_grad for p in peft_model.parameters()) == len(trainable) + 4
    assert len(family.decode(peft_model, processor, [torch.zeros(8000).numpy() + 0.1], max_new_tokens=2)) == 1


def test_lora_layers_restricts_and_plain_list_would_hit_audio():
    family = get_family("qwen3_asr")
    model, _ = family.tiny(TEXTS, seed=0)
    assert {n.split(".")[5] for n in lora_modules(apply_lora(model, r=2, alpha=4, layers=[1]))} == {"1"}
    # Why the default is a regex: a plain q/k/v list also adapts the audio encoder's attention.
    model, _ = family.tiny(TEXTS, seed=0)
    plain = lora_modules(apply_lora(model, r=2, alpha=4, target_regex=r".*\.(?:q_proj|k_proj|v_proj)"))
    assert any("audio_tower" in n for n in plain)
    model, _ = family.tiny(TEXTS, seed=0)
    with pytest.raises(ConfigError, match="out of range"):
        apply_lora(model, r=2, alpha=4, layers=[7])
    with pytest.raises(ConfigError, match="matched no module"):
        apply_lora(model, r=2, alpha=4, target_regex=r"nothing\.here")


def test_whisper_groups_and_lora():
    family = get_family("whisper")
    model, _ = family.tiny(TEXTS, seed=0)
    names = trainable_names(model, {"decoder_top": {"top": 1}, "lm_head": {}, "encoder_norm": {}})
    assert names["lm_head"] == ["model.decoder.embed_tokens.weight"]  # proj_out is tied
    assert {n.split(".")[3] for n in names["decoder_top"]} == {"1"}
    assert names["encoder_norm"] == ["model.encoder.layer_norm.weight", "model.encoder.layer_norm.bias"]
    adapted = lora_modules(apply_lora(model, r=2, alpha=4))
    assert adapted and all(".decoder.layers." in n for n in adapted)
    assert len(adapted) == 2 * 10  # self q,k,v,out + cross q,k,v,out + fc1, fc2 per decoder layer


# --- real sizes on the meta device (nothing downloaded) --------------------------------------------------------


def test_transformers_default_config_is_not_quite_the_1p7b():
    from transformers import Qwen3ASRConfig

    default = Qwen3ASRConfig()
    # Defaults are the 1.7B's except the encoder output width (3584); the 1.7B's projector ends at 2048.
    assert default.text_config.hidden_size == 2048 and default.audio_config.encoder_layers == 24
    assert default.audio_config.output_dim == 3584
    assert get_family("qwen3_asr").reference_config("1.7B").audio_config.output_dim == 2048


def test_meta_counts_match_reference_1p7b(qwen_meta_1p7b):
    model = qwen_meta_1p7b
    spec = {"projector": {}, "llm_top": {"top": 12}, "audio_top": {"top": 8}, "lm_head": {}}
    table = group_table(model, trainable_names(model, spec))
    counts = {r.group: r.params for r in table.rows}
    assert table.total == 2_038_052_480
    assert counts == {
        "projector": 3_148_800,
        "llm_top": 604_032_000,
        "audio_top": 100_769_792,
        "lm_head": 311_164_928,
    }
    assert table.notes == [
        "lm_head is tied to embed_tokens: training it trains the input embeddings (311,164,928 params)"
    ]
    tower = group_table(model, trainable_names(model, {"audio_tower": {}}))
    assert tower.trainable == 314_328_704
    with pytest.raises(ConfigError, match="top 30 but the model has only 28"):
        trainable_names(model, {"llm_top": {"top": 30}})


def test_meta_lora_count_1p7b(qwen_meta_1p7b):
    import copy

    peft_model = apply_lora(copy.deepcopy(qwen_meta_1p7b), r=16, alpha=32)
    n = sum(p.numel() for name, p in peft_model.named_parameters() if ".lora_" in name)
    assert n == 17_432_576  # REFERENCE.md: 17.43 M for r16 on all 28 LLM layers, attention + MLP


def test_meta_counts_match_reference_0p6b_and_whisper_large_v3():
    small, whisper = meta_model("qwen3_asr", "0.6B"), meta_model("whisper", "large-v3")
    spec = {"projector": {}, "llm_top": {"top": 12}, "audio_top": {"top": 8}, "lm_head": {}}
    table = group_table(small, trainable_names(small, spec))
    assert table.total == 782_426_112
    assert {r.group: r.params for r in table.rows} == {
        "projector": 1_722_240,
        "llm_top": 188_771_328,
        "audio_top": 77_163_520,
        "lm_head": 155_582_464,
    }
    wt = group_table(whisper, trainable_names(whisper, {"decoder_top": {"top": 32}, "lm_head": {}}))
    assert wt.total == 1_543_490_560
    assert wt.notes[0].startswith("lm_head is tied to embed_tokens")


def test_custom_regex_group_from_a_recipe():
    from caspi.config import GroupSpec

    model, _ = get_family("qwen3_asr").tiny(["שלום עולם"], size="xs")
    spec = {"convs": GroupSpec(regex=r"model\.audio_tower\.conv2d\d\.").options(), "projector": {}}
    names = trainable_names(model, spec)
    assert names["convs"] and all(n.startswith("model.audio_tower.conv2d") for n in names["convs"])
    with pytest.raises(ConfigError, match="bad regex"):
        trainable_names(model, {"broken": {"regex": "(unclosed"}})
    with pytest.raises(ConfigError, match="takes no other options"):
        trainable_names(model, {"mixed": {"regex": ".*", "top": 2}})
    with pytest.raises(ConfigError, match="define one with"):
        trainable_names(model, {"nonesuch": {}})
