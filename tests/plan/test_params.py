"""plan_model: exact parameter counts per phase from the recipe's model on the meta device (REFERENCE.md, "Sizes")."""

from __future__ import annotations

import pytest
import torch

from caspi.config import Recipe, load_recipe
from caspi.config.load import apply_overrides
from caspi.errors import ConfigError
from caspi.models import get_family
from caspi.models.unfreeze import apply_lora, apply_trainable, lora_substitute, trainable_names
from caspi.plan.params import TINY_PLACEHOLDER_TEXTS, plan_model

torch.set_num_threads(1)
ROUND2 = "recipes/round2-2xa100.yaml"


def recipe_with(path_or_recipe, *overrides: str) -> Recipe:
    base = load_recipe(path_or_recipe) if isinstance(path_or_recipe, str) else path_or_recipe
    return Recipe.model_validate(apply_overrides(base.to_dict(), list(overrides)))


@pytest.fixture(scope="module")
def full_17b():
    return plan_model(recipe_with(ROUND2, "lora.enabled=false"))


def test_qwen3_asr_17b_counts_equal_reference(full_17b):
    plan = full_17b
    assert plan.total == 2_038_052_480
    assert plan.lora_total == 0
    b, a = plan.phases
    assert (b.name, b.start_epoch, a.name, a.start_epoch) == ("Strategy B", 1, "Strategy A", 3)
    assert b.groups == {"projector": 3_148_800, "llm_top": 604_032_000, "lm_head": 311_164_928}
    assert a.groups == {"projector": 3_148_800, "audio_top": 100_769_792, "llm_top": 604_032_000,
                        "lm_head": 311_164_928}
    assert b.trainable == 3_148_800 + 604_032_000 + 311_164_928 and b.lora == 0
    assert a.trainable == b.trainable + 100_769_792 == a.trained_so_far
    assert a.layers == {"audio": list(range(16, 24)), "llm": list(range(16, 28))}
    # the projector trains, so every decoder layer is recorded; the audio encoder from its lowest trained layer
    assert b.grad_from == {"audio": None, "llm": 0} and a.grad_from == {"audio": 16, "llm": 0}
    d = plan.dims
    assert (d.audio_layers, d.audio_d_model, d.audio_heads, d.audio_ffn) == (24, 1024, 16, 4096)
    assert (d.llm_layers, d.hidden, d.heads, d.kv_heads, d.intermediate, d.vocab) == (28, 2048, 16, 8, 6144, 151_936)
    assert d.tied_embeddings
    tied = [n for n in plan.notes if "tied" in n]
    assert len(tied) == 1 and "311,164,928" in tied[0] and tied[0].startswith("WARNING 'Strategy B', 'Strategy A'")


def test_lora_as_round2_recipe_says():
    plan = plan_model(load_recipe(ROUND2))
    assert plan.total == 2_038_052_480
    assert round(plan.lora_total / 1e6, 2) == 17.43  # r16 on all 28 LLM layers, attention + MLP
    b = plan.phases[0]
    # With LoRA the top-12 layers train their adapters instead of their linears (lora_substitute), plus their norms:
    # 12 layers × (r16 adapters of the 7 linears + 4 norms: 2 × 2048 + 2 × 128).
    per_layer_lora = plan.lora_total // 28
    assert b.groups["llm_top"] == 12 * (per_layer_lora + 2 * 2048 + 2 * 128)
    assert b.lora == 12 * per_layer_lora
    assert b.groups["lm_head"] == 311_164_928 and b.groups["projector"] == 3_148_800
    assert any("lora_substitute" in n for n in plan.notes)


def test_qwen3_asr_06b_counts_equal_reference():
    plan = plan_model(recipe_with(ROUND2, "model.name_or_path=Qwen/Qwen3-ASR-0.6B-hf", "lora.enabled=false"))
    assert plan.total == 782_426_112
    a = plan.phases[1]
    assert a.groups == {"projector": 1_722_240, "audio_top": 77_163_520, "llm_top": 188_771_328,
                        "lm_head": 155_582_464}
    lora = plan_model(recipe_with(ROUND2, "model.name_or_path=Qwen/Qwen3-ASR-0.6B-hf"))
    assert round(lora.lora_total / 1e6, 2) == 10.09


@pytest.mark.parametrize("lora", [False, True])
def test_tiny_phase_trainable_is_what_the_trainer_sets(lora):
    """The same calls as TrainingRun._enter_phase on a real tiny model: requires_grad equals the plan."""
    r = recipe_with("recipes/demo-round2.yaml", f"lora.enabled={str(lora).lower()}", "model.init_from=null")
    plan = plan_model(r)
    model, _ = get_family("qwen3_asr").tiny(TINY_PLACEHOLDER_TEXTS, size=r.model.tiny, language=r.model.language)
    if lora:
        model = apply_lora(model, r=r.lora.r, alpha=r.lora.alpha, dropout=r.lora.dropout,
                           target_regex=r.lora.target_regex)
    assert plan.total + plan.lora_total == sum(p.numel() for p in model.parameters())
    for phase, planned in zip(r.unfreeze.phases, plan.phases, strict=True):
        names = trainable_names(model, r.phase_group_specs(phase))
        if lora:
            names = lora_substitute(model, names)
        apply_trainable(model, names)
        real = {n for n, p in model.named_parameters() if p.requires_grad}
        assert real == planned.names
        assert planned.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
        assert (planned.lora > 0) == lora


def test_local_folder_and_unknown_hub_id(tmp_path):
    config = get_family("qwen3_asr").reference_config("0.6B")
    config.save_pretrained(tmp_path)  # config.json only: the plan reads nothing else
    plan = plan_model(recipe_with(ROUND2, f"model.name_or_path={tmp_path}", "lora.enabled=false"))
    assert plan.total == 782_426_112
    with pytest.raises(ConfigError, match="hf download someone/unknown-asr"):
        plan_model(recipe_with(ROUND2, "model.name_or_path=someone/unknown-asr"))
    with pytest.raises(ConfigError, match="does not exist"):
        plan_model(recipe_with(ROUND2, f"model.name_or_path={tmp_path}/missing"))
