"""Typed recipes: every shipped recipe validates; every bad key and value is reported at once with its path."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from caspi.config import Recipe, apply_overrides, load_recipe, parse_override, validate_recipe_dict
from caspi.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"round2-2xa100.yaml", "round2-8xa100.yaml", "demo-cpu.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.grad_accumulation * recipe.train.micro_batch * recipe.hardware.world_size == (
        recipe.train.effective_batch
    )


def test_round2_expresses_seed_001_plan():
    r = load_recipe(RECIPES[0].parent / "round2-2xa100.yaml")
    assert (r.train.micro_batch, r.train.effective_batch, r.train.epochs, r.data.max_duration) == (2, 64, 5, 15.0)
    assert r.hardware.world_size == 2 and r.grad_accumulation == 16
    b, a = r.unfreeze.phases
    assert (b.start_epoch, b.lr) == (1, {"projector": 2e-4, "llm_top": 5e-5, "lm_head": 1e-4})
    assert (a.start_epoch, a.lr) == (3, {"projector": 1e-4, "audio_top": 3e-5, "llm_top": 3e-5, "lm_head": 1e-4})
    assert r.unfreeze.groups["llm_top"].top == 12 and r.unfreeze.groups["audio_top"].top == 8
    assert (r.lora.enabled, r.lora.r, r.lora.alpha) == (True, 16, 32)
    assert (r.eval.every_steps, r.eval.samples) == (500, 100)
    assert r.augment.speed_factors == [0.9, 1.0, 1.1] and r.augment.spec_augment.enabled


def test_8_gpu_recipe_differs_only_in_hardware_and_keeps_effective_batch():
    two = load_recipe(RECIPES[0].parent / "round2-2xa100.yaml").to_dict()
    eight = load_recipe(RECIPES[0].parent / "round2-8xa100.yaml")
    assert eight.grad_accumulation == 4 and eight.train.effective_batch == 64
    diff = {k for k in two if two[k] != eight.to_dict()[k]}
    assert diff == {"name", "description", "hardware"}
    # The derived accumulation is not written in either file.
    for name in ("round2-2xa100.yaml", "round2-8xa100.yaml"):
        assert "accumulation" not in yaml.safe_load((RECIPES[0].parent / name).read_text()).get("train", {})


def test_every_problem_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "unfreeze_shedule": [],  # typo of a section
                "train": {"micro_batch": 0, "epochs": 2, "effective_batch": 63, "precision": "fp8"},
                "unfreeze": {"phases": [{"name": "B", "start_epoch": 1, "lr": {"nope": 1e-4}},
                                        {"name": "A", "start_epoch": 4, "lr": {"projector": -1}}]},
                "data": {"max_duration": "long"},
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    text = str(err.value)
    for expected in [
        "unfreeze_shedule: unknown key (did you mean 'unfreeze'?)",
        "train.micro_batch",
        "train.precision",
        "data.max_duration",
        "unfreeze.phases.1.lr",  # negative LR
        "unfreeze.phases.0.lr.nope: unknown group",
        "unfreeze.phases.1.start_epoch: 4 is after the last epoch",
    ]:
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert len(err.value.problems) >= 7


def test_effective_batch_must_divide(tmp_path):
    with pytest.raises(ConfigError, match=r"effective_batch: 64 is not a multiple .*\(3 × 2 = 6\)"):
        load_recipe(RECIPES[0].parent / "round2-2xa100.yaml", ["train.micro_batch=3"])


@pytest.mark.parametrize(
    "override, path, value",
    [
        ("train.max_steps=10", ["train", "max_steps"], 10),
        ("train.seed=7", ["train", "seed"], 7),
        ("data.train_manifest=x/y.jsonl.gz", ["data", "train_manifest"], "x/y.jsonl.gz"),
        ("data.eval_manifest=null", ["data", "eval_manifest"], None),
        ("augment.speed_factors=[0.9, 1.1]", ["augment", "speed_factors"], [0.9, 1.1]),
    ],
)
def test_stable_override_keys(override, path, value):
    assert parse_override(override) == (path, value)
    r = load_recipe(RECIPES[0].parent / "round2-2xa100.yaml", [override])
    node = r.to_dict()
    for part in path:
        node = node[part]
    assert node == value


def test_override_into_a_list_item():
    r = load_recipe(RECIPES[0].parent / "round2-2xa100.yaml", ["unfreeze.phases.1.start_epoch=4"])
    assert r.unfreeze.phases[1].start_epoch == 4


@pytest.mark.parametrize("bad", ["train.max_steps", "=3", "train..seed=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, [bad])


def test_unknown_override_key_is_rejected():
    with pytest.raises(ConfigError, match=r"train\.max_step: unknown key \(did you mean 'max_steps'\?\)"):
        load_recipe(RECIPES[0].parent / "round2-2xa100.yaml", ["train.max_step=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(scalar)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\nname: x\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_recipe(loop)


def test_recipe_is_frozen_and_fingerprint_tracks_content():
    r = validate_recipe_dict({"name": "x"})
    with pytest.raises(ValidationError, match="frozen"):
        r.train.seed = 3  # type: ignore[misc]
    assert r.fingerprint() == Recipe(name="x").fingerprint()
    assert r.fingerprint() != validate_recipe_dict({"name": "x", "train": {"seed": 3}}).fingerprint()


def test_yaml_round_trip():
    r = load_recipe(RECIPES[0].parent / "round2-8xa100.yaml")
    assert validate_recipe_dict(yaml.safe_load(r.to_yaml())) == r


def test_whisper_clip_stretched_past_30_s_by_speed_perturbation_is_refused():
    whisper = RECIPES[0].parent / "whisper-large-v3.yaml"
    with pytest.raises(ConfigError) as err:
        load_recipe(whisper, ["data.max_duration=30"])  # the shipped recipe before issue 14: 30 s ÷ 0.9 = 33.3 s
    (problem,) = err.value.problems
    for expected in ["data.max_duration: 30 s", "augment.speed_factors (0.9)", "33.33 s", "whisper takes (30 s)",
                     "at most 27 s"]:
        assert expected in problem, problem
    with pytest.raises(ConfigError, match="at most 28.5 s"):
        load_recipe(whisper, ["data.max_duration=30", "augment.speed_factors=[0.95, 1.0]"])
    assert load_recipe(whisper, ["augment.speed_factors=[1.0, 1.1]", "data.max_duration=30"]).data.max_duration == 30
    assert load_recipe(whisper).data.max_duration == 27  # the shipped recipe fits: 27 s ÷ 0.9 = 30 s
    # Qwen3-ASR has no fixed window: the same durations are fine.
    assert load_recipe(RECIPES[0].parent / "round2-2xa100.yaml", ["data.max_duration=30"]).data.max_duration == 30


def test_eval_chunks_longer_than_whisper_takes_are_refused_when_the_recipe_loads():
    whisper = RECIPES[0].parent / "whisper-large-v3.yaml"
    with pytest.raises(ConfigError) as err:
        load_recipe(whisper, ["eval.max_chunk_seconds=40"])
    (problem,) = err.value.problems
    assert problem == ("eval.max_chunk_seconds: 40 s is longer than the whisper family takes (30 s); set it and "
                       "eval.chunk_seconds to at most 30")
    assert load_recipe(whisper, ["eval.max_chunk_seconds=30"]).eval.max_chunk_seconds == 30
    qwen = load_recipe(RECIPES[0].parent / "round2-2xa100.yaml", ["eval.max_chunk_seconds=40"])
    assert qwen.eval.max_chunk_seconds == 40  # no fixed window


def test_model_language_is_checked_by_the_family():
    whisper = RECIPES[0].parent / "whisper-large-v3.yaml"
    qwen = RECIPES[0].parent / "round2-2xa100.yaml"
    with pytest.raises(ConfigError, match="model.language: 'Klingon' is not one of Whisper's languages"):
        load_recipe(whisper, ["model.language=Klingon"])
    for language in ("English", "he", "arabic"):
        assert load_recipe(whisper, [f"model.language={language}"]).model.language == language
    assert load_recipe(qwen, ["model.language=Yiddish"]).model.language == "Yiddish"  # a new tag is allowed
    with pytest.raises(ConfigError, match="model.language: .* cannot be a Qwen3-ASR language tag"):
        load_recipe(qwen, ["model.language=He<asr_text>"])


def test_round1_weights_are_named_apart_from_the_architecture():
    qwen = RECIPES[0].parent / "round2-2xa100.yaml"
    r = load_recipe(qwen, ["model.init_from=runs/round1", "model.init_revision=null"])
    assert (r.model.init_from, r.model.name_or_path) == ("runs/round1", "Qwen/Qwen3-ASR-1.7B-hf")
    assert load_recipe(qwen).model.init_from == "round1/final"  # the shipped Round 2 names a Round 1
    assert load_recipe(qwen, ["model.init_from=null"]).model.init_from is None  # None: start from name_or_path
    # Part of the fingerprint: a resume with another Round 1 is "another recipe".
    assert r.fingerprint() != load_recipe(qwen, ["model.init_from=runs/other"]).fingerprint()
    hub = load_recipe(qwen, ["model.init_from=OzLabs/Qwen3-ASR-Hebrew-1.7B", "model.init_revision=v1"])
    assert hub.model.init_revision == "v1"


def test_init_revision_without_init_from_is_reported_with_the_other_problems():
    qwen = RECIPES[0].parent / "round2-2xa100.yaml"
    with pytest.raises(ConfigError) as err:
        load_recipe(qwen, ["model.init_revision=v1", "train.micro_batch=3", "model.init_from=null"])
    problems = err.value.problems
    assert len(problems) == 2, problems
    assert any(p.startswith("model.init_revision: 'v1' is the hub revision of model.init_from, which is not set")
               for p in problems), problems
    assert any(p.startswith("train.effective_batch") for p in problems), problems
    with pytest.raises(ConfigError, match="model.init_from"):
        load_recipe(qwen, ["model.init_from="])  # empty: neither a folder nor a hub id
