"""`deepalign pipeline`: SFT -> reward models -> GRPO stage 1 -> GRPO stage 2 -> compare, each
stage's output feeding the next (DeepSeek-V2 §4's order).

A pipeline recipe lists stages; each names its kind (sft, rm, grpo, compare), its own recipe file
and dotted overrides, in which `${stage}` stands for that earlier stage's final checkpoint (a
compare stage lists its `checkpoints` the same way; its recipe holds evaluation settings,
evals/runner.py). Every stage writes to `{output_dir}/{name}`. Every stage's recipe is validated
before the first one runs. The pipeline resumes stage by stage: a stage whose `final/` (for
compare, `report.json`) exists is skipped, and an interrupted stage resumes from its own latest
checkpoint.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deepalign.recipe import RecipeError, load_recipe


@dataclass
class PipelineStage:
    name: str = ""
    kind: Literal["sft", "rm", "grpo", "compare"] = "sft"
    recipe: str = ""
    overrides: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # compare stages only


@dataclass
class PipelineRecipe:
    output_dir: str = "runs/pipeline"
    stages: list[PipelineStage] = field(default_factory=list)


def _schema(kind: str):
    if kind == "sft":
        from sft.config import SFTRecipe

        return SFTRecipe
    if kind == "rm":
        from rewards.rm_train import RMRecipe

        return RMRecipe
    if kind == "compare":
        from evals.runner import EvalSettings

        return EvalSettings
    from grpo.config import GRPORecipe

    return GRPORecipe


def stage_recipes(pipeline: PipelineRecipe, overrides_for: dict[str, list[str]] | None = None) -> list[tuple]:
    """(stage, validated recipe, output directory) for every stage; errors name the stage."""
    out_root = Path(pipeline.output_dir)
    finals: dict[str, str] = {}
    built = []
    if not pipeline.stages:
        raise RecipeError("stages: a pipeline needs at least one stage")
    for stage in pipeline.stages:
        if not stage.name or not stage.recipe:
            raise RecipeError(f"stages: every stage needs a name and a recipe, got {stage}")
        if stage.name in finals:
            raise RecipeError(f"stages: the name {stage.name!r} is used twice")

        def resolve(text: str, stage=stage) -> str:
            def sub(match):
                key = match.group(1)
                if key not in finals:
                    raise RecipeError(f"stage {stage.name}: ${{{key}}} does not name an earlier stage "
                                      f"(earlier: {', '.join(finals) or 'none'})")
                return finals[key]
            return re.sub(r"\$\{([^}]+)\}", sub, text)

        output = out_root / stage.name
        where = "output_dir" if stage.kind == "compare" else "train.output_dir"
        overrides = [resolve(o) for o in stage.overrides] + [f"{where}={output}"]
        overrides += (overrides_for or {}).get(stage.name, [])
        recipe = load_recipe(stage.recipe, _schema(stage.kind), overrides)
        if stage.kind == "grpo":
            from grpo.driver import validate

            validate(recipe)
        if stage.kind == "compare":
            if len(stage.checkpoints) < 2:
                raise RecipeError(f"stage {stage.name}: a compare stage needs at least two checkpoints")
            stage.checkpoints = [resolve(c) for c in stage.checkpoints]
        built.append((stage, recipe, output))
        finals[stage.name] = str(output / "final")
    return built


def run_pipeline(pipeline: PipelineRecipe) -> dict[str, Path]:
    stages = stage_recipes(pipeline)
    finals: dict[str, Path] = {}
    for stage, recipe, output in stages:
        final = output / "report.json" if stage.kind == "compare" else output / "final"
        if (final / "config.json").exists() or (stage.kind == "compare" and final.exists()):
            print(f"== {stage.name}: done already ({final}); delete it to run the stage again")
            finals[stage.name] = final
            continue
        print(f"== {stage.name} ({stage.kind}: {stage.recipe})")
        start = time.perf_counter()
        if stage.kind == "sft":
            from sft.trainer import train

            finals[stage.name] = Path(train(recipe))
        elif stage.kind == "rm":
            from rewards.rm_train import train_reward_model

            finals[stage.name] = Path(train_reward_model(recipe)[0])
        elif stage.kind == "grpo":
            from grpo.driver import run

            finals[stage.name] = Path(run(recipe))
        else:
            from evals.runner import compare

            finals[stage.name] = compare(stage.checkpoints, recipe)
        print(f"== {stage.name}: {time.perf_counter() - start:.0f} s")
    return finals

