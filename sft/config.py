"""The SFT recipe: typed sections validated from YAML (train/recipe.py).

Sections: `policy` (policy/config.py), `data`, `train`, `optim` and `log` (train/config.py),
`lora`. Every field has a default, so a recipe states only what differs;
`deepalign sft RECIPE.yaml key=value` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.config import LoraConfig, PolicyConfig
from train.config import LogConfig, OptimConfig


@dataclass
class SFTDataConfig:
    """source: a mixture directory written by `deepalign data mix` (manifest.json + shards), a
    chat file (JSONL / Parquet / saved datasets with `messages`, or TRL's `prompt` / `completion`
    pairs, loss on the completion), or `builtin:arithmetic` (synthetic arithmetic chats,
    `num_examples` of them, operands of up to `max_digits` digits; with probability
    `worked_fraction` a demonstration works the columns out before the result). With two or more
    digits, built-in chats never contain the first 500 prompts of the built-in held-out split that
    GRPO and `deepalign eval` measure on.
    max_length: packed row length (or truncation length when pack is false)."""

    source: str = "builtin:arithmetic"
    num_examples: int = 4000
    max_digits: int = 3
    worked_fraction: float = 0.0
    max_length: int = 256
    pack: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.num_examples < 1 or self.max_digits < 1 or self.max_length < 2:
            raise ValueError("num_examples and max_digits must be at least 1, max_length at least 2")
        if not 0.0 <= self.worked_fraction <= 1.0:
            raise ValueError(f"worked_fraction must be in [0, 1], got {self.worked_fraction}")


@dataclass
class TrainConfig:
    """Steps = epochs * rows / (micro_batch_size * grad_accum * world) unless max_steps is set.
    keep_freed_memory: freed host memory stays in the process for reuse, so fresh large tensors
    take no page faults (train/host_memory.py); false = glibc's defaults."""

    output_dir: str = "runs/sft"
    epochs: float = 1.0
    max_steps: int | None = None
    micro_batch_size: int = 8
    grad_accum: int = 1
    balance_loss: bool = True
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 0
    save_final: bool = True
    keep_checkpoints: int = 2
    resume: bool = True
    threads: int | None = None
    keep_freed_memory: bool = True

    def __post_init__(self):
        if self.micro_batch_size < 1 or self.grad_accum < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("micro_batch_size, grad_accum and max_steps must be at least 1")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")


@dataclass
class SFTRecipe:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
