"""Recipes: every YAML in recipes/ loads and validates; overrides and errors name the key."""

from pathlib import Path

import re

import pytest

from pipeline.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert "tiny-cpu.yaml" in names
    assert len(names) >= 2  # the demo and at least one real-model cluster recipe


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.name
    for name in ("pretrain", "sft", "reward", "ppo"):
        stage = getattr(recipe.stages, name)
        if stage is not None:
            assert stage.max_steps > 0 and stage.save_steps > 0


def test_cluster_recipe_is_a_real_model_on_gpus():
    recipe = load_recipe(REPO / "recipes" / "qwen2.5-0.5b-8gpu.yaml")
    assert recipe.stages.pretrain.init_from and recipe.stages.pretrain.bf16
    assert recipe.launch.num_processes == 8 and recipe.launch.config == "zero2"
    assert recipe.tokenizer.train is False


def test_dotted_overrides_are_typed():
    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", ["stages.ppo.kl_coef=0.2", "stages.sft.lora.enabled=true", "name=x"])
    assert recipe.stages.ppo.kl_coef == 0.2
    assert recipe.stages.sft.lora.enabled is True
    assert recipe.name == "x"


@pytest.mark.parametrize("override, expected", [
    ("stages.ppo.kl_coef=abc", "stages.ppo.kl_coef"),
    ("stages.ppo.kl_cof=0.1", "did you mean stages.ppo.kl_coef"),
    ("stages.pretrain.max_steps=-3", "stages.pretrain.max_steps"),
    ("stages.ppo.kl_estimator=k2", "stages.ppo.kl_estimator"),
    ("nonsense.key=1", "nonsense: unknown key"),
])
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(RecipeError) as error:
        load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [override])
    assert expected in str(error.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(RecipeError, match="not key=value"):
        load_recipe(REPO / "recipes" / "tiny-cpu.yaml", ["stages.ppo.kl_coef"])


def test_bad_yaml_key_in_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  sft:\n    learning_rat: 0.1\n")
    with pytest.raises(RecipeError, match=r"stages\.sft\.learning_rat: unknown key; did you mean stages\.sft\.learning_rate"):
        load_recipe(path)


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe("/nonexistent/recipe.yaml")


@pytest.mark.parametrize("overrides, expected", [
    (["stages.pretrain=null"], "stages.sft.init_from: required when stages.pretrain is null"),
    (["stages.reward=null"], "stages.ppo.reward_model: required by algorithm ppo"),
    (["stages.ppo.select_best=gold", "stages.ppo.eval_prompts=/data/mine.jsonl"], "stages.ppo.select_best: gold needs a gold judge"),
    (["stages.ppo.select_best=holdout_reward"], "stages.ppo.select_best: holdout_reward needs a held-out reward model"),
    (["stages.ppo.gradient_accumulation_steps=3"], "stages.ppo.gradient_accumulation_steps"),
    (["stages.ppo={algorithm: grpo, rollout_batch_size: 3, num_generations: 3, num_minibatches: 2}"], "stages.ppo.num_generations"),
    (["stages.ppo.algorithm=sac"], "stages.ppo.algorithm: 'sac' is not one of"),
])
def test_rules_between_fields_are_checked_when_the_recipe_loads(overrides, expected):
    with pytest.raises(RecipeError, match=re.escape(expected)):
        load_recipe(REPO / "recipes" / "tiny-cpu.yaml", overrides)


def test_each_rl_algorithm_has_its_own_config_type():
    from stages.config import DPOConfig, GRPOConfig, PPOConfig, RLOOConfig

    kinds = {algorithm: type(load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [f"stages.ppo={{algorithm: {algorithm}}}"]).stages.ppo)
             for algorithm in ("ppo", "grpo", "rloo", "dpo")}
    assert kinds == {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig, "dpo": DPOConfig}
    assert "beta" in DPOConfig.model_fields and "beta" not in PPOConfig.model_fields
    assert "num_generations" not in PPOConfig.model_fields and "value_init" not in GRPOConfig.model_fields
    assert type(load_recipe(REPO / "recipes" / "tiny-cpu.yaml").stages.ppo) is PPOConfig  # no algorithm key: PPO


def test_the_recipe_seed_drives_world_stages_and_evaluation_unless_set():
    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", ["seed=2", "stages.sft.seed=9"])
    assert (recipe.data.world.seed, recipe.stages.pretrain.seed, recipe.stages.reward.seed, recipe.stages.ppo.seed) == (2, 2, 2, 2)
    assert recipe.stages.sft.seed == 9 and recipe.eval.seed == 2 + 1234
    default = load_recipe(REPO / "recipes" / "tiny-cpu.yaml")
    assert (default.data.world.seed, default.stages.ppo.seed, default.eval.seed) == (0, 0, 1234)  # seed 0: as before
