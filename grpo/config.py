"""The GRPO recipe: typed sections validated from YAML (deepalign/recipe.py).

Sections: `policy` (the starting checkpoint: SFT for stage 1, stage 1 for stage 2), `reference`
(default: the starting checkpoint), `data` (prompts), `rewards` (a weighted list of reward
functions, rewards/combine.py), `algorithm` (grpo/loss.py, grpo/advantages.py), `rollout`,
`ray`, `train`, `log`. Defaults follow DeepSeekMath's GRPO (beta 0.04, eps 0.2, seq_mean,
group-scaled advantages, mu 1), not TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from policy.config import PolicyConfig
from sft.config import LogConfig


@dataclass
class PromptDataConfig:
    """source: builtin:arithmetic, builtin:code (tiny Python tasks with tests), builtin:chat
    (arithmetic plus helpful / harmful requests, for stage 2) or a JSONL file of prompt rows
    (`prompt` plus columns such as `answer` or `tests`). eval_prompts are held out from training."""

    source: str = "builtin:arithmetic"
    num_prompts: int = 2000
    eval_prompts: int = 200
    max_digits: int = 3
    seed: int = 0


@dataclass
class RewardSpec:
    """name: a registered reward, `module:function` or an entry point; alias: its display name;
    ray_actor: serve a `reward_model` on its own Ray actor instead of in the driver."""

    name: str = "math_accuracy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    alias: str | None = None
    ray_actor: bool = False


@dataclass
class AlgorithmConfig:
    group_size: int = 8
    prompts_per_step: int = 8
    mu: int = 1
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2
    aggregation: Literal["seq_mean", "token_mean", "constant"] = "seq_mean"
    advantage_scale: Literal["group", "batch", "none"] = "group"
    ratio_level: Literal["token", "sequence"] = "token"
    tis_cap: float | None = 2.0  # truncated IS between rollout and learner log-probs; None = off
    dynamic_sampling: bool = False
    max_refills: int = 3
    overlong_mask: bool = False
    balance_loss: bool = True


@dataclass
class RolloutConfig:
    """engine: local (ours) or vllm (GPU; the `vllm` extra). dtype: the engine's weight copy."""

    engine: Literal["local", "vllm"] = "local"
    workers: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sync_timeout_s: float = 60.0
    generate_timeout_s: float = 600.0
    restarts: int = 1


@dataclass
class RayConfig:
    """enabled false runs every worker in the driver's process (tests, debugging).
    placement: colocated = rollout workers and learners share the devices; split = they get their
    own; hybrid = the rollout engine lives in the (single) learner's process on its own copy of
    the weights, so a sync is an in-memory copy (the paper's "hybrid engine"; rollout.workers
    is then unused)."""

    enabled: bool = True
    address: str | None = None
    placement: Literal["colocated", "split", "hybrid"] = "colocated"
    num_cpus: int | None = None
    learners: int = 1


@dataclass
class GRPOTrainConfig:
    """mixed_precision bf16: the learner's forward passes (policy and reference) run under
    torch.autocast in bfloat16 over fp32 weights and optimiser (AMX CPUs and GPUs); no: fp32.
    attention: the learner's attention kernel. auto = eager on CPU (GRPO rows are short, and the
    backward of PyTorch's CPU flash-attention kernel was 12% of a SmolLM2 learner step), sdpa on GPU.
    expert_parallel: with several learners and a DeepSeekMoE policy, each learner holds 1/W of the
    routed experts (sft/expert_parallel.py) and FSDP2 shards the rest; false = FSDP2 for all."""

    output_dir: str = "runs/grpo"
    mixed_precision: Literal["no", "bf16"] = "no"
    steps: int = 100
    lr: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 16
    warmup_steps: int = 0
    seed: int = 0
    save_every: int = 0
    eval_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    threads: int | None = None
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    expert_parallel: bool = True


@dataclass
class GRPORecipe:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reference: str | None = None
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    on_error: Literal["raise", "zero"] = "raise"
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
