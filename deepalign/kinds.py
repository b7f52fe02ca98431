"""The recipe kinds, in one table: which dataclass validates a recipe of each kind and which
function runs it. The command line, the pipeline's stages and the shipped-recipe test all read it.

A shipped recipe's kind follows from its file name (`kind_of_file`): `grpo*.yaml` (GRPO stages),
`rm_*.yaml` (reward models), and `sft`, `mix`, `pipeline`, `compare`, `policy`, `convert`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Kind:
    name: str
    schema_path: str  # "module:Dataclass"
    runner_path: str | None  # "module:function(recipe) -> output"; None: the command runs it itself

    @property
    def schema(self) -> type:
        return _load(self.schema_path)

    def run(self, recipe):
        return _load(self.runner_path)(recipe)


KINDS = {k.name: k for k in (
    Kind("sft", "sft.config:SFTRecipe", "sft.trainer:train"),
    Kind("rm", "rewards.config:RMRecipe", "rewards.rm_train:run"),
    Kind("grpo", "grpo.config:GRPORecipe", "grpo.driver:run"),
    Kind("mix", "data_tools.config:MixRecipe", "data_tools.mix:build_mixture"),
    Kind("pipeline", "deepalign.pipeline:PipelineRecipe", "deepalign.seeds:run"),
    Kind("compare", "evals.config:EvalSettings", None),  # also needs the checkpoints (evals/runner.py)
    Kind("policy", "policy.config:PolicyDemoRecipe", None),  # `policy info` / `policy demo`
    Kind("convert", "convert.config:ConvertRecipe", "convert.run:run"),  # `policy convert`
)}


def kind_of_file(path: str | Path) -> Kind:
    stem = Path(path).stem
    if stem.startswith("grpo"):
        return KINDS["grpo"]
    if stem.startswith("rm_"):
        return KINDS["rm"]
    if stem in KINDS:
        return KINDS[stem]
    raise ValueError(f"{path}: no recipe kind for files named {stem!r} (grpo*, rm_*, {', '.join(KINDS)})")
