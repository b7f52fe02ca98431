"""`deepalign pipeline`: SFT -> reward models -> GRPO stage 1 -> GRPO stage 2 -> compare, each
stage's output feeding the next (DeepSeek-V2 §4's order).

A pipeline recipe lists stages; each names its kind (sft, rm, grpo, compare: deepalign/kinds.py),
its own recipe file and dotted overrides, in which `${stage}` stands for that earlier stage's
final checkpoint (a compare stage lists its `checkpoints` the same way; its recipe holds
evaluation settings, evals/config.py). Every stage writes to `{output_dir}/{name}`. Every stage's
recipe is validated (and a GRPO stage's rewards resolved) before the first one runs. The pipeline
resumes stage by stage: a stage whose `final/` (for compare, `report.json`) exists is skipped, and
an interrupted stage resumes from its own latest checkpoint. `seeds: N` (or `--seeds N`) runs the
whole pipeline once per training seed and reports the spread (deepalign/seeds.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple

from deepalign.kinds import KINDS
from train.recipe import RecipeError, load_recipe


@dataclass
class PipelineStage:
    name: str = ""
    kind: Literal["sft", "rm", "grpo", "compare"] = "sft"
    recipe: str = ""
    overrides: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # compare stages only

    def __post_init__(self):
        if not self.name or not self.recipe:
            raise ValueError(f"every stage needs a name and a recipe, got name={self.name!r} recipe={self.recipe!r}")


@dataclass
class PipelineRecipe:
    output_dir: str = "runs/pipeline"
    stages: list[PipelineStage] = field(default_factory=list)
    seeds: int = 1  # > 1: the whole pipeline once per training seed, then the spread (deepalign/seeds.py)

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if not self.stages:
            raise ValueError("stages: a pipeline needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: stage names must be unique, got {names}")


class PlannedStage(NamedTuple):
    stage: PipelineStage  # with `${...}` resolved in its checkpoints
    recipe: object  # the stage's validated recipe
    output: Path


def stage_recipes(pipeline: PipelineRecipe) -> list[PlannedStage]:
    """Every stage with its validated recipe and output directory; errors name the stage."""
    finals: dict[str, str] = {}
    planned = []
    for stage in pipeline.stages:

        def resolve(text: str, stage=stage) -> str:
            def sub(match):
                key = match.group(1)
                if key not in finals:
                    raise RecipeError(f"stage {stage.name}: ${{{key}}} does not name an earlier stage "
                                      f"(earlier: {', '.join(finals) or 'none'})")
                return finals[key]
            return re.sub(r"\$\{([^}]+)\}", sub, text)

        output = Path(pipeline.output_dir) / stage.name
        where = "output_dir" if stage.kind == "compare" else "train.output_dir"
        overrides = [resolve(o) for o in stage.overrides] + [f"{where}={output}"]
        recipe = load_recipe(stage.recipe, KINDS[stage.kind].schema, overrides)
        if stage.kind == "grpo":
            from grpo.stage import preflight

            preflight(recipe)
        if stage.kind == "compare":
            if len(stage.checkpoints) < 2:
                raise RecipeError(f"stage {stage.name}: a compare stage needs at least two checkpoints")
            stage = replace(stage, checkpoints=[resolve(c) for c in stage.checkpoints])
        planned.append(PlannedStage(stage, recipe, output))
        finals[stage.name] = str(output / "final")
    return planned


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
        if stage.kind == "compare":
            from evals.runner import compare

            finals[stage.name] = compare(stage.checkpoints, recipe)
        else:
            finals[stage.name] = Path(KINDS[stage.kind].run(recipe))
        print(f"== {stage.name}: {time.perf_counter() - start:.0f} s")
    return finals
