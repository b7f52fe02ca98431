"""Recipe sections for rewards: `RewardSpec` (one weighted reward of a GRPO recipe, built by
rewards/combine.py) and the reward-model training recipe (`deepalign rm train`, rewards/rm_train.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from data_tools.schema import CATEGORIES
from policy.config import PolicyConfig
from train.config import LogConfig, OptimConfig


@dataclass
class RewardSpec:
    """name: a registered reward, `module:function`, `path/to/file.py:function` or an entry point;
    alias: its display name, and its key in recipes and overrides (`rewards.<alias>.weight=...`);
    without one, the name (a `module:function` or `file.py:function` name: the function's);
    timeout: seconds per call; ray_actor: serve a `reward_model` on its own Ray actor instead of in
    the driver; categories: score only rows whose `category` column is one of these (the others get
    None, "does not apply", and are not sent to the reward): DeepSeek-R1's second RL stage gives
    reasoning prompts a rule reward and general prompts the reward models, so an RM never scores a
    prompt outside its training distribution."""

    name: str = "math_accuracy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    alias: str | None = None
    ray_actor: bool = False
    categories: list[str] | None = None

    def __post_init__(self):
        if not self.name:
            raise ValueError("a reward needs a name")
        if self.categories is not None:
            unknown = [c for c in self.categories if c not in CATEGORIES]
            if unknown or not self.categories:
                raise ValueError(f"reward {self.label}: categories must be a non-empty list of {list(CATEGORIES)}, "
                                 f"got {self.categories}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"reward {self.label}: timeout must be positive, got {self.timeout}")
        if self.ray_actor and (self.name != "reward_model" or "path" not in self.params):
            raise ValueError(f"reward {self.label}: ray_actor serves a reward_model; it needs name reward_model and "
                             "params.path")

    @property
    def label(self) -> str:
        return self.alias or self.name.rpartition(":")[2]


@dataclass
class RMDataConfig:
    """source: `builtin:helpful|safety|reasoning` or a JSONL of {"prompt","chosen","rejected"
    [,"margin"]} rows (or {"prompt","completion","label"} with loss: pointwise)."""

    source: str = "builtin:helpful"
    num_examples: int = 2000
    eval_fraction: float = 0.1
    max_length: int = 256
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.num_examples < 2 or self.max_length < 2:
            raise ValueError("num_examples and max_length must be at least 2")


@dataclass
class RMTrainConfig:
    output_dir: str = "runs/rm"
    loss: Literal["pairwise", "pointwise"] = "pairwise"
    use_margin: bool = False
    center_coef: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_every: int = 50
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.eval_every < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("batch_size, eval_every and max_steps must be at least 1")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")


@dataclass
class RMRecipe:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: RMDataConfig = field(default_factory=RMDataConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    # torch's AdamW betas and TRL's RewardTrainer learning rate
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, betas=[0.9, 0.999]))
    log: LogConfig = field(default_factory=LogConfig)
