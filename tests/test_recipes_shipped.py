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


def test_demo_pipeline_stages_read_the_checkpoints_it_trains(tmp_path):
    """With output_dir moved, stage 2 and compare score with the RMs this run trains, not runs/demo's."""
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/demo/pipeline.yaml", PipelineRecipe,
                         [f"output_dir={tmp_path}"])
    stages = {stage.name: (stage, built) for stage, built, _ in stage_recipes(recipe)}
    stage2 = stages["grpo_stage2"][1]
    assert [r.params.get("path") for r in stage2.rewards[:2]] == [f"{tmp_path}/rm_helpful/final",
                                                                  f"{tmp_path}/rm_safety/final"]
    assert stage2.policy.name == stage2.reference == f"{tmp_path}/grpo_stage1/final"
    assert stages["compare"][1].reward_model == f"{tmp_path}/rm_helpful/final"
    assert stages["compare"][0].checkpoints == [f"{tmp_path}/{s}/final" for s in ("sft", "grpo_stage1", "grpo_stage2")]
