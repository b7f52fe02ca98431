"""The SFT recipe: typed sections validated from YAML (deepalign/recipe.py).

Sections: `policy` (policy/config.py), `data`, `train`, `lora`, `log`. Every field has a
default, so a recipe states only what differs; `deepalign sft RECIPE.yaml key=value` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policy.config import PolicyConfig


@dataclass
class SFTDataConfig:
    """source: a mixture directory written by `deepalign data mix` (manifest.json + shards),
    or `builtin:arithmetic` (synthetic arithmetic chats, `num_examples` of them, operands of up
    to `max_digits` digits; with probability `worked_fraction` a demonstration works the columns
    out before the result). With two or more digits, built-in chats never contain the first 500 prompts
    of the built-in held-out split that GRPO and `deepalign eval` measure on.
    max_length: packed row length (or truncation length when pack is false)."""

    source: str = "builtin:arithmetic"
    num_examples: int = 4000
    max_digits: int = 3
    worked_fraction: float = 0.0
    max_length: int = 256
    pack: bool = True
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimisation. Steps = epochs * rows / (micro_batch_size * grad_accum * world) unless
    max_steps is set. lr follows `schedule` after `warmup_steps` of linear warm-up."""

    output_dir: str = "runs/sft"
    epochs: float = 1.0
    max_steps: int | None = None
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-6
    min_lr_ratio: float = 0.1
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    step_gamma: float = 0.316
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    balance_loss: bool = True
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 0
    save_final: bool = True
    keep_checkpoints: int = 2
    resume: bool = True
    threads: int | None = None


@dataclass
class LoraConfig:
    """LoRA through peft on the attention projections (the original LoRA recipe).

    On DeepSeek-V2 policies peft maps the MLP names gate_proj/up_proj/down_proj onto the routed
    experts' fused 3-D tensors, which our MoE layer does not read through LoRA yet, so they are
    refused there; on other architectures (SmolLM2) they may be added."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "k_proj", "v_proj",
    ])


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: bool = True


@dataclass
class SFTRecipe:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
