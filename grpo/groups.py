"""One step's groups: prompts -> G samples each -> rewards, with DAPO's dynamic sampling; and the
held-out greedy evaluation, which scores the same way.

`sample_groups` takes prompts in the seeded order, has the cluster sample G completions of each,
scores them with the combined reward (or, with an environment, runs G multi-turn trajectories of
each through envs/trajectories.py, whose rewards are the environment's), and (with
`algorithm.dynamic_sampling`) keeps only groups whose rewards are not all equal, sampling more
prompts until the step has `prompts_per_step` groups or `max_refills` rounds are spent. Round k
of step s samples with seed train.seed * 1_000_003 + 101 * s + k. `Timer` adds up the seconds
of each phase.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from data_tools.prompts import PromptRow
from envs.trajectories import run_trajectories, trajectory_metrics
from grpo.config import GRPORecipe
from grpo.sampling import informative_groups
from rewards.combine import CombinedReward, RewardBatch
from rewards.text import completions_for
from rollout.engine import Rollout


class Timer:
    """seconds["rollout_s"] etc.: the time spent in each `with timer("rollout_s"):` block."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class PromptOrder:
    """Seeded epochs over the training prompts; its state is two integers."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.position = n, seed, 0
        self._epoch, self._order = -1, []

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, random.Random(self.seed + epoch).sample(range(self.n), self.n)
            out.append(self._order[i])
            self.position += 1
        return out


@dataclass
class PromptSet:
    """Prompt rows and their token ids (chat-templated for the policy)."""

    rows: list[PromptRow]
    ids: list[list[int]]


@dataclass
class Episodes:
    """Multi-turn rollouts: fresh environments from `make_env`, rendered with the policy's tokenizer,
    at most `max_turns` answers each, within the policy's `context` (tokens; None = unbounded)."""

    make_env: object
    tokenizer: object
    max_turns: int
    context: int | None = None


@dataclass
class Groups:
    """The step's kept groups, prompt-major (sample j of group i is row i * G + j).
    rewards (P, G): total reward; components: each reward's raw values per sample (None = n/a)."""

    rows: list[PromptRow]
    rollout: Rollout
    rewards: torch.Tensor
    components: dict[str, list[float | None]] = field(default_factory=dict)
    errors: int = 0
    dropped: int = 0
    tokens_per_second: float = 0.0
    env_metrics: dict[str, float] = field(default_factory=dict)  # env/* over the kept trajectories


def score(reward: CombinedReward, rows: list[PromptRow], rollout: Rollout, n: int) -> RewardBatch:
    """The rewards of n completions per row; every column of the rows reaches the reward functions
    under its own name (None where a row lacks it)."""
    keys = sorted({k for r in rows for k in r.columns})
    columns = {k: [r.columns.get(k) for r in rows for _ in range(n)] for k in keys}
    prompts = [r.prompt for r in rows for _ in range(n)]
    return reward(prompts, completions_for(prompts, rollout.texts), completion_ids=rollout.completion_ids,
                  **columns)


def _rollout_and_score(cluster, reward: CombinedReward | Episodes, rows: list[PromptRow], ids: list[list[int]],
                       n: int, sampling, seed: int, timer: Timer | None = None
                       ) -> tuple[Rollout, torch.Tensor, RewardBatch | None, list[dict]]:
    """(rollout, total rewards (P, n), the reward batch or None with an environment, each
    trajectory's info (envs/trajectories.py; [] without an environment)).
    Trajectories count as rollout time (the environments' steps run between the engine's turns)."""
    timer = timer or Timer()
    if isinstance(reward, Episodes):
        with timer("rollout_s"):
            rollout, total, infos = run_trajectories(cluster.generate, reward.tokenizer, rows, reward.make_env, n,
                                                     sampling, seed, reward.max_turns, reward.context)
        return rollout, total, None, infos
    with timer("rollout_s"):
        rollout = cluster.generate(ids, n, sampling, seed=seed)
    with timer("reward_s"):
        scored = score(reward, rows, rollout, n)
    return rollout, torch.tensor(scored.total).view(len(rows), n), scored, []


def sample_groups(cluster, reward: CombinedReward | Episodes, prompts: PromptSet, order: PromptOrder,
                  recipe: GRPORecipe, step: int, timer: Timer) -> Groups:
    a, g = recipe.algorithm, recipe.algorithm.group_size
    rows, parts, totals, components, errors, dropped, refills = [], [], [], {}, 0, 0, 0
    tokens_per_second, infos = 0.0, []
    while len(rows) < a.prompts_per_step:
        picked = order.take(a.prompts_per_step - len(rows))
        picked_rows = [prompts.rows[i] for i in picked]
        rollout, total, scored, round_infos = _rollout_and_score(
            cluster, reward, picked_rows, [prompts.ids[i] for i in picked], g, recipe.rollout.sampling,
            recipe.train.seed * 1_000_003 + step * 101 + refills, timer)
        tokens_per_second = rollout.tokens_per_second
        keep = informative_groups(total) if a.dynamic_sampling and refills < a.max_refills else \
            torch.ones(len(picked), dtype=torch.bool)
        kept = keep.nonzero().squeeze(1).tolist()
        samples = [i * g + j for i in kept for j in range(g)]
        rows += [picked_rows[i] for i in kept]
        parts.append(rollout.rows(samples))
        totals.append(total[keep])
        infos += [round_infos[i] for i in samples] if round_infos else []
        if scored is not None:
            for name, values in scored.components.items():
                components.setdefault(name, []).extend(values[i] for i in samples)
            errors += sum(scored.errors.values())
        dropped += len(picked) - len(kept)
        refills += 1
    return Groups(rows, Rollout.concat(parts), torch.cat(totals), components, errors, dropped, tokens_per_second,
                  trajectory_metrics(infos) if infos else {})


def evaluate(cluster, reward: CombinedReward | Episodes, prompts: PromptSet, recipe: GRPORecipe) -> dict[str, float]:
    """Greedy completions (or trajectories) of the held-out prompts: mean reward per component
    (accuracy for math; with an environment, its env/* metrics: pass rate, turns, ...)."""
    rollout, total, scored, infos = _rollout_and_score(cluster, reward, prompts.rows, prompts.ids, 1,
                                                       recipe.rollout.sampling.greedy(), 0)
    out = {"eval/reward": float(total.mean())}
    for name, values in (scored.components.items() if scored is not None else ()):
        kept = [v for v in values if v is not None]
        if kept:
            out[f"eval/{name}"] = sum(kept) / len(kept)
    out.update({f"eval/{k}": v for k, v in (trajectory_metrics(infos) if infos else {}).items()})
    out["eval/response_length"] = rollout.new_tokens / len(rollout.completion_ids)
    return out
