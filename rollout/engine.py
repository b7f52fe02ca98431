"""The rollout-engine interface GRPO drives: generate G samples per prompt, load new weights.

A `Rollout` holds, per sample (prompt-major: sample j of prompt i is row i*G + j), the prompt
and completion token ids, the log-probability of each completion token under the engine's
sampling distribution (logits / temperature, before top-k / top-p), and why it stopped
("stop": EOS or a stop string; "length": the token budget). A completion ends with the EOS
token when the model emitted it, so the learner scores the decision to stop as well.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch


@dataclass
class SamplingConfig:
    """How completions are sampled (the recipe's `rollout.sampling`): temperature 0 = greedy;
    top_k 0 = off; stop: strings that end a completion (the string is kept). The seed is given
    per call: each GRPO step samples with its own."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    def greedy(self) -> SamplingConfig:
        return replace(self, temperature=0.0, top_p=1.0, top_k=0)


@dataclass
class Rollout:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    texts: list[str]
    seconds: float = 0.0
    weights_version: int = 0  # the weights version the rollout started with
    # routing replay: per sample an int16 (completion length, MoE layers, top_k) tensor of the experts the
    # engine routed to at each position whose output predicts a completion token; None = not recorded
    routing: list[torch.Tensor] | None = None
    # multi-turn trajectories (envs/trajectories.py): per sample, True where the completion token is the
    # model's (False: an environment's turn, never trained on); None = every completion token is the model's
    loss_mask: list[list[bool]] | None = None
    # asynchronous GRPO: per sample, the weights version that produced each completion token (partial rollouts
    # and multi-turn trajectories can span versions); None = every token is weights_version's
    token_versions: list[list[int]] | None = None
    sync_probe_diff: float = 0.0  # the largest probe |delta log p| of weights the engine took during this rollout

    def versions(self, i: int) -> list[int]:
        """The weights version of each of sample i's completion tokens."""
        if self.token_versions is not None:
            return self.token_versions[i]
        return [self.weights_version] * len(self.completion_ids[i])

    @property
    def oldest_version(self) -> int:
        """The oldest weights version behind any token (the staleness bound applies to it)."""
        if self.token_versions is None:
            return self.weights_version
        return min((min(v) for v in self.token_versions if v), default=self.weights_version)

    @property
    def new_tokens(self) -> int:
        """Tokens the engine generated (an environment's tokens inside trajectories are not)."""
        if self.loss_mask is not None:
            return sum(sum(m) for m in self.loss_mask)
        return sum(len(c) for c in self.completion_ids)

    def rows(self, index) -> Rollout:
        index = list(index)
        return Rollout([self.prompt_ids[i] for i in index], [self.completion_ids[i] for i in index],
                       [self.logprobs[i] for i in index], [self.finish_reasons[i] for i in index],
                       [self.texts[i] for i in index], self.seconds, self.weights_version,
                       None if self.routing is None else [self.routing[i] for i in index],
                       None if self.loss_mask is None else [self.loss_mask[i] for i in index],
                       None if self.token_versions is None else [self.token_versions[i] for i in index],
                       self.sync_probe_diff)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)

    @classmethod
    def concat(cls, parts: list[Rollout]) -> Rollout:
        """The rows of several rollouts in order; seconds and probe diff are the largest (parts run in parallel),
        the version the oldest."""
        versions = None if all(p.token_versions is None for p in parts) else \
            [p.versions(i) for p in parts for i in range(len(p.completion_ids))]
        return cls([x for p in parts for x in p.prompt_ids], [x for p in parts for x in p.completion_ids],
                   [x for p in parts for x in p.logprobs], [x for p in parts for x in p.finish_reasons],
                   [x for p in parts for x in p.texts], max((p.seconds for p in parts), default=0.0),
                   min((p.weights_version for p in parts), default=0),
                   None if any(p.routing is None for p in parts) else [x for p in parts for x in p.routing],
                   None if all(p.loss_mask is None for p in parts) else
                   [x for p in parts for x in (p.loss_mask or [[True] * len(c) for c in p.completion_ids])],
                   versions, max((p.sync_probe_diff for p in parts), default=0.0))


class RolloutEngine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int = 0) -> Rollout:
        """n samples for each tokenised prompt, drawn reproducibly from `seed`."""

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Replace the policy weights (full, unsharded tensors by parameter name)."""

    def probe(self, tokens: list[int]) -> list[float]:
        """log p(tokens[i] | tokens[:i]) for i >= 1 from the weights the engine runs on now."""


def weights_checksum(state_dict: dict[str, torch.Tensor], stride: int = 16) -> str:
    """A digest of names, dtypes, shapes and the bit patterns of every `stride`-th value (summed as
    integers): cheap enough for every sync, and a missing, truncated, reshaped or zeroed tensor
    changes it. Sender and receiver compare it after a sync."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach()
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
        sample = t.reshape(-1)[::stride] if t.is_contiguous() else t.contiguous().reshape(-1)[::stride]
        total = int(sample.view(bits).sum(dtype=torch.int64)) if t.numel() else 0
        h.update(f"{name}{tuple(t.shape)}{t.dtype}{total};".encode())
    return h.hexdigest()[:16]
