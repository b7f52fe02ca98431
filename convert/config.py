"""The recipe of `deepalign policy convert` (convert/run.py): which dense model, the DeepSeek-V2
shapes to convert it to, the calibration and heal data, and the heal's optimiser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policy.convert import ConvertShape
from train.recipe import RecipeError


@dataclass
class ConvertData:
    """Teacher replies (convert/data.py): `calibration` chats fit the conversion, `heal` chats
    train it, `eval` held-out chats measure perplexity; `arithmetic` held-out two-digit problems
    (the GRPO recipes' held-out set) measure accuracy."""

    calibration: int = 64
    heal: int = 384
    eval: int = 64
    arithmetic: int = 200
    max_new_tokens: int = 96
    temperature: float = 0.8


@dataclass
class HealConfig:
    """Distillation from the dense model's logits (forward KL over the whole vocabulary, every token
    of each chat). steps 0 = no heal. mixed_precision bf16: autocast over fp32 weights, for CPUs
    with bf16 matmul units (AMX) and GPUs; elsewhere bf16 is slower than fp32."""

    steps: int = 40
    batch_size: int = 8
    lr: float = 1.0e-4
    warmup_steps: int = 4
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "bf16"] = "no"


@dataclass
class ConvertRecipe:
    source: str = "smollm2-135m-instruct"
    to: Literal["deepseek-v2"] = "deepseek-v2"
    out: str = ""
    seed: int = 0
    shape: ConvertShape = field(default_factory=ConvertShape)
    data: ConvertData = field(default_factory=ConvertData)
    heal: HealConfig = field(default_factory=HealConfig)

    def __post_init__(self):
        if not self.out:
            raise RecipeError("out: the directory to write the converted model to is required (--out DIR)")
        if self.data.calibration < 1:
            raise RecipeError("data.calibration: the conversion needs at least 1 calibration chat")
        if self.heal.steps and self.data.heal < 1:
            raise RecipeError("data.heal: 0 chats to heal on; set heal.steps=0 to convert without a heal")
