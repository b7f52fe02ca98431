"""Every shipped recipe validates against its schema (a typo in a recipe fails CI)."""

from pathlib import Path

import pytest

from data_tools.mix_config import MixRecipe
from deepalign.recipe import load_recipe
from evals.runner import EvalSettings
from grpo.config import GRPORecipe
from grpo.driver import validate
from grpo.pipeline import PipelineRecipe, stage_recipes
from policy.config import PolicyDemoRecipe
from rewards.rm_train import RMRecipe
from sft.config import SFTRecipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
SCHEMAS = {"policy": PolicyDemoRecipe, "sft": SFTRecipe, "mix": MixRecipe, "pipeline": PipelineRecipe,
           "compare": EvalSettings}


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"policy", "sft", "mix", "pipeline", "grpo_stage1", "grpo_stage2"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_validates(path):
    if path.stem.startswith("rm_"):
        schema = RMRecipe
    elif path.stem.startswith("grpo"):
        schema = GRPORecipe
    else:
        schema = SCHEMAS.get(path.stem)
    if schema is None:
        pytest.fail(f"{path}: no schema known for recipes named {path.stem!r}")
    recipe = load_recipe(path, schema)
    if schema is GRPORecipe:
        validate(recipe)
    if schema is PipelineRecipe:
        assert len(stage_recipes(recipe)) == len(recipe.stages)  # every stage's own recipe validates
