"""Typed recipes: one YAML file describes a whole run, validated before any GPU work.

`schema.py` holds the frozen section models and the cross-field checks; `load.py` reads YAML (with its `base:`
chain), applies `key.sub=value` overrides and validates in one pass, reporting every problem at once.

    recipe = load_recipe("recipes/demo-cpu.yaml", ["train.max_steps=10"])
"""

from caspi.config.load import apply_overrides, load_recipe, parse_override, validate_recipe_dict
from caspi.config.schema import (
    AsrScorerConfig,
    AuditConfig,
    AugmentConfig,
    CtcScorerConfig,
    DataConfig,
    EvalConfig,
    GateConfig,
    GroupSpec,
    HardwareConfig,
    LoraConfig,
    LossScorerConfig,
    ModelConfig,
    PhaseConfig,
    Qwen3AlignerConfig,
    RateScorerConfig,
    Recipe,
    ScorersConfig,
    SpecAugmentConfig,
    TextScorerConfig,
    TrackingConfig,
    TrainConfig,
    UnfreezeConfig,
    VadScorerConfig,
)

__all__ = [
    "AsrScorerConfig", "AuditConfig", "AugmentConfig", "CtcScorerConfig", "DataConfig", "EvalConfig", "GateConfig",
    "GroupSpec", "HardwareConfig", "LoraConfig", "LossScorerConfig", "ModelConfig", "PhaseConfig", "Qwen3AlignerConfig",
    "RateScorerConfig", "Recipe", "ScorersConfig", "SpecAugmentConfig", "TextScorerConfig", "TrackingConfig",
    "TrainConfig", "UnfreezeConfig", "VadScorerConfig", "apply_overrides", "load_recipe", "parse_override",
    "validate_recipe_dict",
]
