"""The processes GRPO runs on, and the only module here that imports Ray.

- `RolloutWorker`: a rollout engine (rollout/local.py or rollout/vllm_engine.py) on its own
  copy of the policy; loads versioned weights and checks their checksum.
- `LearnerWorker`: a `Learner` (grpo/learner.py) that can also publish its weights to Ray's
  object store, so rollout workers fetch them without passing through the driver.
- `Handle`: one worker, either a Ray actor or (`ray.enabled: false`) an object in the driver's
  process, with the same `submit` / `gather` calls, so the driver reads the same either way.
  `gather` turns a timeout or a dead actor into a `WorkerError` naming the worker and the call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from grpo.config import GRPORecipe
from grpo.learner import Learner
from rollout.engine import Rollout, SamplingConfig, weights_checksum


class WorkerError(RuntimeError):
    """A worker timed out, died, or returned something inconsistent."""


class WorkerDied(WorkerError):
    pass


class RolloutWorker:
    def __init__(self, recipe: GRPORecipe, index: int, threads: int | None = None):
        torch.set_num_threads(threads or os.cpu_count())  # Ray actors start with one thread
        self.index = index
        r, p = recipe.rollout, recipe.policy
        if r.engine == "vllm":
            from rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(p.name, dtype=r.dtype, seed=recipe.train.seed + index)
        else:
            from policy.load import load_policy
            from rollout.local import LocalEngine

            model, tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
            if torch.cuda.is_available():
                model = model.cuda()
            self.engine = LocalEngine(model, tokenizer, dtype=getattr(torch, r.dtype))
        self.version = 0

    def pid(self) -> int:
        return os.getpid()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> Rollout:
        return self.engine.generate(prompts, n, sampling)

    def load_weights(self, state: dict[str, torch.Tensor], version: int, checksum: str) -> int:
        got = weights_checksum(state)
        if got != checksum:
            raise WorkerError(f"rollout worker {self.index}: weights version {version} arrived with checksum {got}, "
                              f"sent {checksum} (partial or corrupt sync)")
        self.engine.load_weights(state, version)
        self.version = version
        return version


class LearnerWorker(Learner):
    """A learner; with `ray.placement: hybrid` it also hosts the rollout engine (on its own copy of
    the weights, in the engine's dtype), so a weight sync is a copy in memory, not a transfer."""

    engine = None

    def start_engine(self) -> None:
        import copy

        from rollout.local import LocalEngine

        if self.info.enabled:
            raise WorkerError("ray.placement hybrid needs one learner (ray.learners: 1)")
        model = copy.deepcopy(self.model).eval()
        self.engine = LocalEngine(model, self.tokenizer, dtype=getattr(torch, self.recipe.rollout.dtype))

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> Rollout:
        return self.engine.generate(prompts, n, sampling)

    def sync_engine(self, version: int) -> int:
        self.engine.load_weights(self.model.state_dict(), version)
        return version

    def pid(self) -> int:
        return os.getpid()

    def publish_weights(self, use_ray: bool) -> dict | None:
        """Rank 0: {"state": [ObjectRef] or the dict itself, "checksum": ...}; other ranks: None."""
        state = self.full_state_dict()
        if state is None:
            return None
        checksum = weights_checksum(state)
        if use_ray:
            import ray

            return {"state": [ray.put(state)], "checksum": checksum}  # a list: the driver never fetches it
        return {"state": state, "checksum": checksum}


@dataclass
class _Done:
    value: object


class Handle:
    """A worker as a Ray actor (options given) or as a local object (options None)."""

    def __init__(self, name: str, cls, args: tuple, ray_options: dict | None):
        self.name = name
        if ray_options is None:
            self.actor, self.local = None, cls(*args)
        else:
            import ray

            self.actor, self.local = ray.remote(**ray_options)(cls).remote(*args), None

    def submit(self, method: str, *args):
        if self.actor is not None:
            return getattr(self.actor, method).remote(*args)
        return _Done(getattr(self.local, method)(*args))

    def kill(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor, no_restart=True)


def gather(futures: list, timeout: float | None, what: str) -> list:
    """Results of submitted calls; a timeout or a dead worker is a WorkerError naming `what`."""
    if all(isinstance(f, _Done) for f in futures):
        return [f.value for f in futures]
    import ray

    try:
        return ray.get(futures, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise WorkerError(f"{what} timed out after {timeout:g}s") from None
    except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
        raise WorkerDied(f"{what}: worker died ({type(exc).__name__})") from exc
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        raise WorkerError(f"{what}: {cause}") from exc
