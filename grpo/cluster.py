"""Where GRPO's workers run: Ray actors (`ray.enabled: true`), or plain objects in the driver's
process (`false`, for tests and debugging), behind the same typed methods. The only module that
imports Ray.

`Cluster` holds the learner group (grpo/workers.py `LearnerWorker`, one torch.distributed group
over Ray actors) and the rollout workers (`RolloutWorker`; with placement hybrid the engine lives
in the learner's process instead). Its methods are what the driver calls: `generate`,
`train_step`, `sync` (or, asynchronous, `offer`), `load`, `save`, `save_final`. Every call has a
timeout where one is set; a timeout or a dead actor becomes a `WorkerError` naming the worker and
the call. A rollout worker that dies (while generating or idle) is restarted with the current
weights up to `rollout.restarts` times; then the run stops, saying so.

Weights travel learner -> object store -> rollout workers: the learner's published weights stay
in Ray's object store and each rollout worker fetches them itself (the driver never does).
`reward_model_actor` serves a reward model on its own actor.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

from grpo.batch import GRPOBatch
from grpo.config import GRPORecipe, RayConfig
from grpo.workers import LearnerWorker, RolloutWorker, WorkerDied, WorkerError
from rollout.engine import Rollout, SamplingConfig


def start(cfg: RayConfig) -> None:
    if not cfg.enabled:
        return
    import logging

    import ray

    # Ray's default for a new local cluster, token authentication, is kept; its notice that it is on is not
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if not ray.is_initialized():
        ray.init(address=cfg.address, num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)


def _free_address() -> tuple[str, int]:
    """An address and free port for the learner group's rendezvous, found on a Ray node."""
    import ray

    @ray.remote(num_cpus=0)
    def probe():
        import socket

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    return ray.get(probe.remote())


@dataclass
class _Done:
    value: object


class Worker:
    """One worker as a Ray actor (options given) or as a local object (options None)."""

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

    def alive(self) -> bool:
        try:
            wait([self.submit("pid")], 10, f"{self.name}.pid")
            return True
        except WorkerError:
            return False

    def kill(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor, no_restart=True)


def wait(futures: list, timeout: float | None, what: str, fetch: bool = True) -> list:
    """Results of submitted calls (or, with fetch False, the futures once they are done); a timeout
    or a dead worker is a WorkerError naming `what`."""
    if all(isinstance(f, _Done) for f in futures):
        return [f.value for f in futures] if fetch else futures
    import ray

    try:
        if fetch:
            return ray.get(futures, timeout=timeout)
        done, _ = ray.wait(futures, num_returns=len(futures), timeout=timeout, fetch_local=False)
        if len(done) < len(futures):
            raise ray.exceptions.GetTimeoutError()
        ray.get(futures[1:])  # raise a remote error of the other ranks (they return None)
        return futures
    except ray.exceptions.GetTimeoutError:
        raise WorkerError(f"{what} timed out after {timeout:g}s") from None
    except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
        raise WorkerDied(f"{what}: worker died ({type(exc).__name__})") from exc
    except ray.exceptions.RayTaskError as exc:  # the worker's own error, as one line (not Ray's traceback)
        cause = getattr(exc, "cause", None)
        raise WorkerError(f"{what}: {cause if cause is not None else exc.as_instanceof_cause()}") from exc


class Cluster:
    """The learner group and the rollout workers of one GRPO run."""

    def __init__(self, recipe: GRPORecipe):
        self.recipe = recipe
        r, ray_cfg = recipe.rollout, recipe.ray
        self.hybrid = ray_cfg.placement == "hybrid"
        # asynchronous runs offer weights to workers mid-rollout (`offer`); the hybrid engine and vLLM are synced
        self.offers = bool(recipe.algorithm.max_staleness) and not self.hybrid and r.engine == "local"
        learner_opts, self.rollout_opts = self._actor_options()
        world = ray_cfg.learners
        address, port = _free_address() if world > 1 else ("127.0.0.1", 0)
        self.learners = [Worker(f"learner {i}", LearnerWorker, (recipe, i, world, address, port), learner_opts)
                         for i in range(world)]
        if self.hybrid:
            self._learners("start_engine")
            self.rollout = self.learners  # generation runs in the learner's process
        else:
            self.rollout = [self._spawn_rollout(i) for i in range(r.workers)]
        self.restarts = [0] * len(self.rollout)
        self.restart_lock, self.restart_round = threading.Lock(), 0  # restarts from either driver thread
        self.published = None  # the latest weights (an object-store reference on Ray) and their version
        self.published_version = -1

    def _actor_options(self) -> tuple[dict | None, dict | None]:
        """colocated: a learner and a rollout worker share each GPU (half each); split: one GPU each."""
        if not self.recipe.ray.enabled:
            return None, None
        import torch

        gpu, placement = torch.cuda.is_available(), self.recipe.ray.placement
        split = placement == "split"
        cpus = 1 if split else 0
        learner = {"num_gpus": (1 if split or placement == "hybrid" else 0.5) if gpu else 0, "num_cpus": cpus}
        rollout = {"num_gpus": (1 if split else 0.5) if gpu else 0, "num_cpus": cpus, "max_restarts": 0}
        if self.offers:  # weights are offered while the worker generates
            rollout["max_concurrency"] = 2
        return learner, rollout

    def _spawn_rollout(self, i: int) -> Worker:
        return Worker(f"rollout worker {i}", RolloutWorker, (self.recipe, i, self.recipe.train.threads),
                       self.rollout_opts)

    def _learners(self, method: str, *args, timeout: float | None = None) -> list:
        return wait([h.submit(method, *args) for h in self.learners], timeout, f"learners.{method}")

    # ---- the learner group ----------------------------------------------------------------
    def describe(self) -> str:
        """One line: what the learners run (processes, FSDP2 / EP, LoRA) and where rollouts run."""
        r = self.recipe.rollout
        rollout = ("in the learner's process (placement hybrid)" if self.hybrid else
                   f"{len(self.rollout)} {r.engine} worker{'s' if len(self.rollout) > 1 else ''}")
        ray = "Ray" if self.recipe.ray.enabled else "one process (ray.enabled false)"
        return f"{self._learners('describe')[0]}; rollout: {rollout}, {r.dtype}; {ray}"

    def train_step(self, batch: GRPOBatch) -> dict[str, float]:
        return self._learners("train_step", batch)[0]

    def score(self, batch: GRPOBatch):
        """The learner's log-probs (N, C) of the batch's completions."""
        return self._learners("score", batch)[0]

    def load(self, folder: Path) -> dict:
        return self._learners("load", folder)[0]

    def save(self, output_dir: Path, step: int, driver_state: dict, keep: int) -> Path:
        return Path(self._learners("save", output_dir, step, driver_state, keep)[0])

    def save_final(self, output_dir: Path) -> Path:
        return Path(self._learners("save_final", output_dir)[0])

    # ---- rollout --------------------------------------------------------------------------
    def sync(self, version: int) -> float:
        """The learners' weights onto every rollout worker, as `version`; each proves it holds them
        (grpo/workers.py). Returns the largest probe |delta log p| between an engine and the learner."""
        timeout = self.recipe.rollout.sync_timeout_s
        if self.hybrid:
            return self._learners("sync_engine", version, timeout=timeout)[0]
        self._publish(version)
        return self._with_restarts(lambda: self._load(range(len(self.rollout)), version))

    def _publish(self, version: int, copy: bool = False) -> None:
        """The learners' weights as `self.published` (an object-store reference on Ray); `copy`: an
        in-process run's copy of the learner's live tensors, which its next update changes."""
        futures = [h.submit("publish_weights") for h in self.learners]
        self.published = wait(futures, self.recipe.rollout.sync_timeout_s, "learners.publish_weights", fetch=False)[0]
        if copy and isinstance(self.published, _Done):
            value = self.published.value
            self.published = _Done({**value, "state": {k: v.clone() for k, v in value["state"].items()}})
        self.published_version = version

    def offer(self, version: int) -> None:
        """Asynchronous GRPO: the learners' weights into every rollout worker's offer slot, as `version`
        (grpo/workers.py); returns once each holds them (checksum checked), not waiting for a rollout
        in flight, which takes them at its next rollout or decode step and proves them there."""
        self._publish(version, copy=True)
        published = self.published.value if isinstance(self.published, _Done) else self.published

        def call():
            wait([w.submit("offer_weights", published, version) for w in self.rollout],
                 self.recipe.rollout.sync_timeout_s, f"weight offer (version {version})")
        self._with_restarts(call)

    def _load(self, workers, version: int) -> float:
        published = self.published.value if isinstance(self.published, _Done) else self.published
        futures = [self.rollout[i].submit("load_weights", published, version) for i in workers]
        return max(wait(futures, self.recipe.rollout.sync_timeout_s, f"weight sync (version {version})"))

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int) -> Rollout:
        """Split the prompts over the rollout workers (each its share, in order)."""
        per = math.ceil(len(prompts) / len(self.rollout))
        shards = [prompts[i * per : (i + 1) * per] for i in range(len(self.rollout))]

        def call():
            futures = [w.submit("generate", s, n, sampling, seed) for w, s in zip(self.rollout, shards, strict=True)
                       if s]
            return wait(futures, self.recipe.rollout.generate_timeout_s, "rollout.generate")

        return Rollout.concat(self._with_restarts(call))

    def _with_restarts(self, call):
        """call(); a dead rollout worker is restarted with the current weights and the call retried,
        up to rollout.restarts times per worker. Asynchronous runs call it from two threads (sampling
        and the weight offer): one restarts, the other sees the restart happened and retries."""
        while True:
            seen = self.restart_round
            try:
                return call()
            except WorkerDied as exc:
                if self.hybrid:
                    raise WorkerError(f"{exc}: the learner hosting the engine died (placement hybrid)") from exc
                with self.restart_lock:
                    if self.restart_round != seen:  # the other thread restarted the dead worker meanwhile
                        continue
                    self._restart_dead(exc)

    def _restart_dead(self, exc: WorkerDied) -> None:
        dead = [i for i, w in enumerate(self.rollout) if not w.alive()]
        limit = self.recipe.rollout.restarts
        if not dead:
            raise exc
        if any(self.restarts[i] >= limit for i in dead):
            raise WorkerError(f"{exc}; rollout worker(s) {dead} dead and restarts exhausted "
                              f"(rollout.restarts={limit}): the run stops") from exc
        for i in dead:
            print(f"rollout worker {i} died; restarting it with weights version {self.published_version}")
            self.restarts[i] += 1
            self.rollout[i] = self._spawn_rollout(i)
            if self.published is not None:
                self._load([i], self.published_version)
        self.restart_round += 1


def reward_model_actor(params: dict):
    """A `reward_model` reward served by its own Ray actor: returns the TRL-signature function."""
    import ray

    from rewards.reward_model import RewardModelScorer

    actor = ray.remote(num_cpus=0)(RewardModelScorer).remote(params["path"], params.get("batch_size", 8),
                                                              params.get("max_length", 1024))

    def score(prompts, completions, **_columns):
        return ray.get(actor.score.remote(prompts, completions))

    return score
