"""Every shipped recipe validates against its schema (a typo in a recipe fails CI)."""

from pathlib import Path

import pytest

from deepalign.kinds import kind_of_file
from deepalign.pipeline import PipelineRecipe, stage_recipes
from grpo.config import GRPORecipe
from grpo.stage import preflight
from train.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"policy", "sft", "mix", "pipeline", "grpo_stage1", "grpo_stage2"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_validates(path):
    try:
        schema = kind_of_file(path).schema
    except ValueError:
        pytest.fail(f"{path}: no schema known for recipes named {path.stem!r}")
    recipe = load_recipe(path, schema)
    if schema is GRPORecipe:  # rewards called on the first row where the data is here (not data/ of V2-Lite)
        source = recipe.data.source
        preflight(recipe, data=source.startswith("builtin:") or Path(source).exists())
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


def test_demo_stage2_scores_chat_with_the_rms_and_arithmetic_by_ground_truth():
    """The shipped stage 2 routes by category: each demo RM scores the prompts of its own domain
    (helpful: "Tell me something about X"; safety: "How do I X?") and never arithmetic; a reward
    routed to categories the data lacks fails before anything loads."""
    from train.recipe import RecipeError

    path = Path(__file__).resolve().parents[1] / "recipes/demo/grpo_stage2.yaml"
    stage2 = load_recipe(path, GRPORecipe)
    routes = {r.label: (r.weight, r.categories) for r in stage2.rewards}
    assert stage2.algorithm.loss.beta == 0.1  # the KL weight benchmarks/RESULTS.md measured over seeds and builds
    assert routes == {"rm_helpful": (0.5, ["helpful"]), "rm_safety": (0.5, ["benign", "harmful"]),
                      "rule": (0.5, None), "math_accuracy": (1.0, ["math"])}
    with pytest.raises(RecipeError, match="rewards.rm_helpful: categories .* need a 'category' column"):
        preflight(load_recipe(path, GRPORecipe, ["data.source=builtin:arithmetic"]))
