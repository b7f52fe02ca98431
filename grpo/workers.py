"""The processes GRPO runs, as plain classes (grpo/cluster.py runs them as Ray actors or in-process).

- `RolloutWorker`: a rollout engine (rollout/local.py or rollout/vllm_engine.py) on its own copy of
  the policy; loads versioned weights and checks their checksum.
- `LearnerWorker`: a `Learner` (grpo/learner.py) that publishes its weights with their checksum;
  with `ray.placement: hybrid` it also hosts the rollout engine on its own copy of the weights, so
  a sync is an in-memory copy, not a transfer.
"""

from __future__ import annotations

import copy
import os

import torch

from grpo.config import GRPORecipe
from grpo.learner import Learner
from rollout.engine import Rollout, SamplingConfig, weights_checksum


class WorkerError(RuntimeError):
    """A worker timed out, died, or returned something inconsistent."""


class WorkerDied(WorkerError):
    pass


def make_engine(recipe: GRPORecipe, index: int, model=None, tokenizer=None):
    """The recipe's rollout engine; `model` (hybrid placement) is the learner's policy, copied."""
    r, p = recipe.rollout, recipe.policy
    if r.engine == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(p.name, dtype=r.dtype, seed=recipe.train.seed + index)
    from rollout.local import LocalEngine

    if model is None:
        from policy.load import load_policy

        model, tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
        if torch.cuda.is_available():
            model = model.cuda()
    else:
        model = copy.deepcopy(model).eval()
    return LocalEngine(model, tokenizer, dtype=getattr(torch, r.dtype))


class RolloutWorker:
    def __init__(self, recipe: GRPORecipe, index: int, threads: int | None = None):
        torch.set_num_threads(threads or os.cpu_count())  # Ray actors start with one thread
        self.index = index
        self.engine = make_engine(recipe, index)
        self.version = 0

    def pid(self) -> int:
        return os.getpid()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Rollout:
        return self.engine.generate(prompts, n, sampling, seed)

    def load_weights(self, published: dict, version: int) -> int:
        """published: {"state": name -> tensor, "checksum": the sender's weights_checksum}."""
        got = weights_checksum(published["state"])
        if got != published["checksum"]:
            raise WorkerError(f"rollout worker {self.index}: weights version {version} arrived with checksum {got}, "
                              f"sent {published['checksum']} (partial or corrupt sync)")
        self.engine.load_weights(published["state"], version)
        self.version = version
        return version


class LearnerWorker(Learner):
    engine = None

    def start_engine(self) -> None:
        if self.info.enabled:
            raise WorkerError("ray.placement hybrid needs one learner (ray.learners: 1)")
        self.engine = make_engine(self.recipe, 0, self.model, self.tokenizer)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Rollout:
        return self.engine.generate(prompts, n, sampling, seed)

    def sync_engine(self, version: int) -> int:
        self.engine.load_weights(self.model.state_dict(), version)
        return version

    def pid(self) -> int:
        return os.getpid()

    def publish_weights(self) -> dict | None:
        """Rank 0: {"state": unsharded weights, "checksum": their digest}; other ranks: None (every
        rank must call it: gathering the shards is collective)."""
        state = self.full_state_dict()
        return None if state is None else {"state": state, "checksum": weights_checksum(state)}
