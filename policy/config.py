"""Recipe sections for the policy: which model, which dtype, and MoE overrides.

`PolicyConfig` is the `policy:` section every recipe shares. `MoEOverrides` has the fields of
`policy.moe.MoEOptions`, each optional: a field left out keeps the preset's (or checkpoint's)
value, so `policy.moe.token_dropping=false` changes only that.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch

from policy.moe import MoEOptions

MoEOverrides = dataclasses.make_dataclass(
    "MoEOverrides",
    [(f.name, typing.get_type_hints(MoEOptions)[f.name] | None, None) for f in dataclasses.fields(MoEOptions)],
    namespace={"__doc__": "MoEOptions fields, each None = keep the preset's value.",
               "__module__": __name__,
               "to_dict": lambda self: {k: v for k, v in dataclasses.asdict(self).items() if v is not None}},
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PolicyConfig:
    """name: a preset (tiny, deepseek-v2, deepseek-v2-lite, smollm2-135m-instruct) or a checkpoint
    directory. dtype: float32 on CPU (bf16 is very slow there), bfloat16 on GPUs."""

    name: str = "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    moe: MoEOverrides = field(default_factory=MoEOverrides)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class LoraConfig:
    """The `lora:` section of SFT and GRPO recipes (policy/lora.py, through peft). Only the adapters
    train; GRPO's reference is the base policy with the adapters disabled.

    target_modules: names of Linear modules (attention projections by default; gate_proj / up_proj /
    down_proj add the MLPs, on DeepSeek-V2 the shared experts and the dense first layers).
    routed_experts: also adapt DeepSeek-V2's routed experts, one (A_e, B_e) pair per expert on each
    fused tensor (gate_up_proj, down_proj); ignored for models without routed experts."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "k_proj", "v_proj",
    ])
    routed_experts: bool = False

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0:
            raise ValueError(f"r must be at least 1 and alpha positive, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DemoConfig:
    """Generation settings of `deepalign policy demo`."""

    prompt: str = "What is 12 + 30?"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    absorbed: bool = True


@dataclass
class PolicyDemoRecipe:
    """The recipe of `deepalign policy demo|info`: a policy section and a demo section."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
