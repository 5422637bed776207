"""Every shipped recipe against the model it names: each phase's groups resolve to real parameters.

Published models are built on the meta device from their reference configs (nothing downloaded); tiny ones are
built for real. A recipe naming a group the model lacks, or more layers than it has, fails here, in CI.
"""

from pathlib import Path

import pytest

from caspi.config import load_recipe
from caspi.models import get_family
from caspi.models.unfreeze import trainable_names
from caspi.testing import meta_model

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def _skeleton(recipe):
    family = get_family(recipe.model.family)
    if recipe.model.tiny:
        return family.tiny(["שלום עולם", "מה שלומך"], size=recipe.model.tiny)[0]
    name = recipe.model.name_or_path
    size = {"qwen3_asr": "0.6B" if "0.6B" in name else "1.7B", "whisper": "large-v3"}[recipe.model.family]
    return meta_model(recipe.model.family, size)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_each_phase_resolves_on_the_named_model(path):
    recipe = load_recipe(path)
    model = _skeleton(recipe)
    for phase in recipe.unfreeze.phases:
        names = trainable_names(model, recipe.phase_group_specs(phase))
        assert set(names) == set(phase.lr) and all(names.values())


def test_round2_strategy_counts_on_the_real_1p7b_shape():
    recipe = load_recipe(RECIPES[0].parent / "round2-2xa100.yaml")
    model = _skeleton(recipe)
    params = dict(model.named_parameters())
    b, a = (trainable_names(model, recipe.phase_group_specs(p)) for p in recipe.unfreeze.phases)
    count = {g: sum(params[n].numel() for n in ns) for g, ns in a.items()}
    assert count == {"projector": 3_148_800, "audio_top": 100_769_792, "llm_top": 604_032_000,
                     "lm_head": 311_164_928}  # REFERENCE.md; lm_head is the tied embedding matrix
    assert set(b) == {"projector", "llm_top", "lm_head"}
