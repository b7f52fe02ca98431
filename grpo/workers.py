"""The processes GRPO runs, as plain classes (grpo/cluster.py runs them as Ray actors or in-process).

- `RolloutWorker`: a rollout engine (rollout/local.py or rollout/vllm_engine.py) on its own copy of
  the policy; loads versioned weights and proves they landed (`verify_sync`).
- `LearnerWorker`: a `Learner` (grpo/learner.py) that publishes its weights with their checksum and
  its own log-probs of a fixed probe sequence; with `ray.placement: hybrid` it also hosts the
  rollout engine on its own copy of the weights, so a sync is an in-memory copy, not a transfer.

A sync is proven, not assumed (other toolkits shipped runs whose engines never got new weights):
the weights arrive with the sender's checksum; once loaded, the engine scores the probe with its
live weights and must agree with the learner within `rollout.sync_tolerance`; and an engine that
holds the weights in the sent dtype (LocalEngine in fp32) must hold exactly the sent bits.
"""

from __future__ import annotations

import copy
import os
import threading

import torch

from grpo.config import GRPORecipe
from grpo.learner import Learner
from policy.logprobs import probe_tokens, sequence_logprobs
from rollout.engine import Rollout, SamplingConfig, weights_checksum
from train.host_memory import keep_freed_memory


class WorkerError(RuntimeError):
    """A worker timed out, died, or returned something inconsistent."""


class WorkerDied(WorkerError):
    pass


def make_engine(recipe: GRPORecipe, index: int, model=None, tokenizer=None):
    """The recipe's rollout engine; `model` (hybrid placement) is the learner's policy, copied."""
    r, p = recipe.rollout, recipe.policy
    if r.engine == "vllm":
        from policy.load import checkpoint_path
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(str(checkpoint_path(p.name, p.seed)), dtype=r.dtype, seed=recipe.train.seed + index,
                          max_model_len=r.max_model_len)
    from rollout.local import LocalEngine

    if model is None:
        from policy.load import load_policy

        model, tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
        if torch.cuda.is_available():
            model = model.cuda()
    else:
        model = copy.deepcopy(model).eval()
    engine = LocalEngine(model, tokenizer, dtype=getattr(torch, r.dtype))
    engine.record_routing = True  # the experts each sample used: replayed or compared (grpo/replay.py)
    return engine


def sync_tolerance(recipe: GRPORecipe) -> float:
    """How far the engine's probe log-probs may be from the learner's: kernels differ (fp32: ~1e-5
    seen), and a bf16 copy rounds (SmolLM2: 0.2 nats at the start, 0.7 once RL had sharpened the
    policy: the rounding error of a log-prob grows with its magnitude). A LocalEngine's bf16 copy is
    proven bit for bit as well (`verify_sync`), so the probe there only checks its compute path."""
    r = recipe.rollout
    return r.sync_tolerance if r.sync_tolerance is not None else (2e-3 if r.dtype == "float32" else 1.0)


def verify_sync(engine, published: dict, version: int, tolerance: float, who: str) -> float:
    """Raise unless the engine now runs the published weights; returns the probe's max |delta log p|.
    An engine whose weights are a torch module (LocalEngine) must hold exactly the sent bits, cast to
    its own dtype when that differs (the cast is deterministic: round to nearest even)."""
    live = torch.tensor(engine.probe(published["probe"]["tokens"]))
    diff = float((live - torch.tensor(published["probe"]["logprobs"])).abs().max())
    if not diff <= tolerance:
        raise WorkerError(f"{who}: weights version {version} did not land: the engine's log-probs of the probe differ "
                          f"from the learner's by {diff:.3g} (rollout.sync_tolerance {tolerance:g})")
    model = getattr(engine, "model", None)
    if model is not None:
        state = published["state"]
        dtype = next(model.parameters()).dtype
        expected = published["checksum"] if next(iter(state.values())).dtype == dtype else \
            weights_checksum({k: v.to(dtype) for k, v in state.items()})
        if weights_checksum(model.state_dict()) != expected:
            raise WorkerError(f"{who}: weights version {version}: the engine's weights differ from the ones sent")
    return diff


class RolloutWorker:
    """One engine. Synchronous runs `load_weights` between rollouts; asynchronous ones (grpo/prefetch.py)
    `offer_weights` at any time, even mid-rollout (Ray then runs the actor with two threads): the
    offer waits in a slot and the engine takes the newest one before its next rollout, or with
    `algorithm.partial_rollouts` before its next decode step."""

    def __init__(self, recipe: GRPORecipe, index: int, threads: int | None = None):
        torch.set_num_threads(threads or os.cpu_count())  # Ray actors start with one thread
        if recipe.train.keep_freed_memory:
            keep_freed_memory()
        self.index = index
        self.engine = make_engine(recipe, index)
        self.tolerance = sync_tolerance(recipe)
        self.version = 0
        self.partial = recipe.algorithm.partial_rollouts
        self.offered: tuple[dict, int] | None = None  # the newest offer not yet taken
        self.lock, self.generating = threading.Lock(), threading.Lock()
        self.probe_diff = 0.0  # the largest probe diff of the weights taken during the current rollout

    def pid(self) -> int:
        return os.getpid()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Rollout:
        with self.generating:  # one rollout at a time (a held-out evaluation waits for a step sampled ahead)
            self.probe_diff = 0.0
            self._take_offer()
            if self.partial:
                rollout = self.engine.generate(prompts, n, sampling, seed, between_steps=self._take_offer)
            else:
                rollout = self.engine.generate(prompts, n, sampling, seed)
            rollout.sync_probe_diff = self.probe_diff
            return rollout

    def offer_weights(self, published: dict, version: int) -> None:
        """Keep `published` (as `load_weights` takes it) for the engine's next rollout or decode step;
        a newer offer replaces one not yet taken. Its checksum is checked on arrival."""
        self._check(published, version)
        with self.lock:
            self.offered = (published, version)

    def _take_offer(self) -> None:
        with self.lock:
            offered, self.offered = self.offered, None
        if offered is not None:
            self.probe_diff = max(self.probe_diff, self._load(*offered))

    def _check(self, published: dict, version: int) -> None:
        got = weights_checksum(published["state"])
        if got != published["checksum"]:
            raise WorkerError(f"rollout worker {self.index}: weights version {version} arrived with checksum {got}, "
                              f"sent {published['checksum']} (partial or corrupt sync)")

    def load_weights(self, published: dict, version: int) -> float:
        """published: {"state": name -> tensor, "checksum": the sender's weights_checksum, "probe": the
        learner's log-probs of the probe}; returns the probe's max |delta log p|."""
        self._check(published, version)
        with self.generating:
            return self._load(published, version)

    def _load(self, published: dict, version: int) -> float:
        self.engine.load_weights(published["state"], version)
        diff = verify_sync(self.engine, published, version, self.tolerance, f"rollout worker {self.index}")
        self.version = version
        return diff


class LearnerWorker(Learner):
    engine = None

    def start_engine(self) -> None:
        self.generating = threading.Lock()
        if self.info.enabled:
            raise WorkerError("ray.placement hybrid needs one learner (ray.learners: 1)")
        # a LoRA policy's engine holds a plain copy of the base, which each sync overwrites with merged weights
        self.engine = make_engine(self.recipe, 0, None if self.lora else self.model, self.tokenizer)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Rollout:
        with self.generating:  # in-process runs: a held-out evaluation waits for a step sampled ahead
            return self.engine.generate(prompts, n, sampling, seed)

    def sync_engine(self, version: int) -> float:
        published = {"state": self.full_state_dict(), "checksum": None, "probe": self._probe()}
        published["checksum"] = weights_checksum(published["state"])
        with self.generating:
            self.engine.load_weights(published["state"], version)
            return verify_sync(self.engine, published, version, sync_tolerance(self.recipe), "the hybrid engine")

    def pid(self) -> int:
        return os.getpid()

    def _probe(self) -> dict:
        """The learner's log-probs of the probe sequence (a forward: every rank takes part)."""
        tokens = probe_tokens(self.model.config.vocab_size)
        return {"tokens": tokens, "logprobs": sequence_logprobs(self.model, tokens)}

    def publish_weights(self) -> dict | None:
        """Rank 0: {"state": unsharded weights, "checksum": their digest, "probe": the learner's
        log-probs of the probe}; other ranks: None (every rank must call it: it is collective)."""
        state = self.full_state_dict()
        probe = self._probe()
        return None if state is None else {"state": state, "checksum": weights_checksum(state), "probe": probe}
