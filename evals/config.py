"""The evaluation settings (`deepalign eval|compare` flags, a `--recipe` YAML with the same keys, or a
pipeline's compare stage): suites, decoding (greedy or sampled, seed, samples, batch size, token
budget) and the data of each suite (evals/data.py). `reward` (a TRL-signature function) adds the
reward suite, scored on `reward_data` (default: the math suite's rows)."""

from __future__ import annotations

from dataclasses import dataclass, field

from evals.data import EvalError
from evals.suites import SUITES


@dataclass
class EvalSettings:
    suites: list[str] = field(default_factory=lambda: ["math", "safety", "stats"])
    temperature: float = 0.0
    samples: int = 1
    pass_k: list[int] = field(default_factory=lambda: [1])
    max_new_tokens: int = 128
    batch_size: int = 16
    seed: int = 0
    math_data: str = "shipped"
    math_limit: int | None = None
    chat_data: str = "builtin"
    reward_model: str | None = None
    reward: str | None = None
    reward_data: str | None = None
    humaneval_limit: int | None = None
    output_dir: str = "runs/compare"

    def __post_init__(self):
        if self.reward and "reward" not in self.suites:
            self.suites = [*self.suites, "reward"]
        if "reward" in self.suites and not self.reward:
            raise EvalError("suite reward needs --reward module:function (or path/to/file.py:function)")
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise EvalError(f"suites: unknown {unknown or 'none given'}; valid: {', '.join(SUITES)}")
        if self.samples < 1 or any(k < 1 for k in self.pass_k):
            raise EvalError("samples and pass_k must be at least 1")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.temperature < 0:
            raise EvalError("max_new_tokens and batch_size must be at least 1, temperature >= 0")
