"""The GRPO driver: one loop that reads top to bottom (DSMath Alg. 1 with I = 1).

    sample prompts -> rollout workers generate G samples each -> rewards score them
    -> group advantages (dynamic sampling refills zero-variance groups) -> learners take mu steps
    -> weights sync learners -> rollout workers (versioned, checksummed, with a timeout)
    -> metrics, checkpoint, held-out evaluation

Rewards run in the driver (plain functions; code_tests brings its own sandbox pool), except
reward models marked `ray_actor`, which are served by a Ray actor. Departures from the paper:
the reference is fixed for the whole stage (the paper resets pi_ref each outer iteration), and
the reward model is not retrained during RL.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from deepalign.recipe import RecipeError
from grpo.advantages import group_advantages
from grpo.batch import build_batch
from grpo.config import GRPORecipe
from grpo.sampling import informative_groups
from grpo.tasks import PromptRow, load_prompts
from grpo.workers import Handle, LearnerWorker, RolloutWorker, WorkerDied, WorkerError, gather
from policy.generate import encode_prompts
from policy.load import load_tokenizer
from rewards.api import UnknownRewardError
from rewards.combine import CombinedReward, RewardComponent
from rollout.engine import Rollout, SamplingConfig
from sft.checkpoint import list_checkpoints
from sft.tracking import Tracker


def build_reward(recipe: GRPORecipe) -> CombinedReward:
    specs = []
    for spec in recipe.rewards:
        if spec.ray_actor:
            specs.append(RewardComponent(spec.alias or spec.name, _actor_reward(spec.params), spec.weight,
                                         spec.timeout))
        else:
            try:
                built = CombinedReward.from_specs([{"name": spec.name, "weight": spec.weight, "params": spec.params,
                                                    "timeout": spec.timeout, "alias": spec.alias}])
            except (UnknownRewardError, ValueError) as exc:
                raise RecipeError(f"rewards: {exc}") from exc
            specs.extend(built.components)
    return CombinedReward(specs, recipe.on_error)


def _actor_reward(params: dict):
    from rewards.reward_model import RewardModelActor

    if "path" not in params:
        raise RecipeError("rewards: a reward_model with ray_actor needs params.path")
    actor = RewardModelActor(num_cpus=0).remote(params["path"], params.get("batch_size", 8),
                                                params.get("max_length", 1024))

    def score(prompts, completions, **_columns):
        import ray

        return ray.get(actor.score.remote(prompts, completions))

    return score


def validate(recipe: GRPORecipe) -> None:
    """Checks that need no model: everything a bad recipe could get wrong before Ray starts."""
    a, r = recipe.algorithm, recipe.rollout
    if a.group_size < 2:
        raise RecipeError(f"algorithm.group_size must be at least 2 (GRPO compares samples), got {a.group_size}")
    for key, value in (("algorithm.prompts_per_step", a.prompts_per_step), ("algorithm.mu", a.mu),
                       ("train.steps", recipe.train.steps), ("rollout.max_new_tokens", r.max_new_tokens),
                       ("rollout.workers", r.workers), ("ray.learners", recipe.ray.learners)):
        if value < 1:
            raise RecipeError(f"{key} must be at least 1, got {value}")
    if not recipe.rewards:
        raise RecipeError("rewards: at least one reward function is needed")
    if r.engine == "vllm" and not recipe.ray.enabled:
        raise RecipeError("rollout.engine vllm runs on Ray workers; set ray.enabled true")
    if recipe.ray.learners > 1 and not recipe.ray.enabled:
        raise RecipeError("ray.learners > 1 needs ray.enabled true")
    if recipe.ray.placement == "hybrid" and (recipe.ray.learners > 1 or r.engine != "local"):
        raise RecipeError("ray.placement hybrid runs our local engine inside a single learner "
                          "(ray.learners: 1, rollout.engine: local)")
    for i, spec in enumerate(recipe.rewards):
        if spec.ray_actor and (spec.name != "reward_model" or "path" not in spec.params):
            raise RecipeError(f"rewards[{i}]: ray_actor serves a reward_model; it needs name reward_model and "
                              "params.path")
        if spec.ray_actor and not recipe.ray.enabled:
            raise RecipeError(f"rewards[{i}]: ray_actor needs ray.enabled true")
    if not any(s.ray_actor for s in recipe.rewards):  # actor-served rewards are built once Ray runs
        build_reward(recipe)


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


def concat(parts: list[Rollout]) -> Rollout:
    return Rollout([x for p in parts for x in p.prompt_ids], [x for p in parts for x in p.completion_ids],
                   [x for p in parts for x in p.logprobs], [x for p in parts for x in p.finish_reasons],
                   [x for p in parts for x in p.texts], max((p.seconds for p in parts), default=0.0),
                   max((p.weights_version for p in parts), default=0))


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


class Workers:
    """The learner group and the rollout workers, spawned on Ray or in-process."""

    def __init__(self, recipe: GRPORecipe):
        self.recipe = recipe
        self.use_ray = recipe.ray.enabled
        gpu = torch.cuda.is_available()
        split = recipe.ray.placement == "split"
        if self.use_ray:
            # colocated: a learner and a rollout worker share each GPU (half each); split: one GPU each
            learner_opts = {"num_gpus": (1 if split or recipe.ray.placement == "hybrid" else 0.5) if gpu else 0,
                            "num_cpus": 1 if split else 0}
            self.rollout_opts = {"num_gpus": (1 if split else 0.5) if gpu else 0, "num_cpus": 1 if split else 0,
                                 "max_restarts": 0}
        else:
            learner_opts, self.rollout_opts = None, None
        world = recipe.ray.learners
        address, port = _free_address() if world > 1 else ("127.0.0.1", 0)
        self.learners = [Handle(f"learner {i}", LearnerWorker, (recipe, i, world, address, port), learner_opts)
                         for i in range(world)]
        self.hybrid = recipe.ray.placement == "hybrid"
        if self.hybrid:
            self.learners_call("start_engine")
            self.rollout = self.learners  # generation runs in the learner's process
        else:
            self.rollout = [self._spawn_rollout(i) for i in range(recipe.rollout.workers)]
        self.restarts = [0] * len(self.rollout)
        self.published: dict | None = None
        self.version = -1
        print(self.learners_call("describe")[0])

    def _spawn_rollout(self, i: int) -> Handle:
        return Handle(f"rollout worker {i}", RolloutWorker, (self.recipe, i, self.recipe.train.threads),
                      self.rollout_opts)

    def learners_call(self, method: str, *args, timeout: float | None = None) -> list:
        return gather([h.submit(method, *args) for h in self.learners], timeout, f"learners.{method}")

    def sync(self, version: int) -> float:
        """Publish the learners' weights and load them on every rollout worker; returns seconds."""
        start = time.perf_counter()
        if self.hybrid:
            self.learners_call("sync_engine", version, timeout=self.recipe.rollout.sync_timeout_s)
            self.version = version
            return time.perf_counter() - start
        self.published = self.learners_call("publish_weights", self.use_ray)[0]
        self._load(list(range(len(self.rollout))), version)
        self.version = version
        return time.perf_counter() - start

    def _load(self, workers: list[int], version: int) -> None:
        state = self.published["state"][0] if self.use_ray else self.published["state"]
        futures = [self.rollout[i].submit("load_weights", state, version, self.published["checksum"]) for i in workers]
        got = gather(futures, self.recipe.rollout.sync_timeout_s, f"weight sync (version {version})")
        if any(v != version for v in got):
            raise WorkerError(f"weight sync: workers report versions {got}, expected {version}")

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> Rollout:
        """Split the prompts over the rollout workers; a dead worker is restarted (with the current
        weights) up to rollout.restarts times, then the run stops with the reason."""
        per = math.ceil(len(prompts) / len(self.rollout))
        shards = [prompts[i * per : (i + 1) * per] for i in range(len(self.rollout))]
        while True:
            futures = [w.submit("generate", s, n, sampling) for w, s in zip(self.rollout, shards, strict=True) if s]
            try:
                parts = gather(futures, self.recipe.rollout.generate_timeout_s, "rollout.generate")
                break
            except WorkerDied as exc:
                if self.hybrid:
                    raise WorkerError(f"{exc}: the learner hosting the engine died (placement hybrid)") from exc
                dead = [i for i, w in enumerate(self.rollout) if not self._alive(w)]
                if not dead or any(self.restarts[i] >= self.recipe.rollout.restarts for i in dead):
                    raise WorkerError(f"{exc}; restarts exhausted (rollout.restarts={self.recipe.rollout.restarts})") \
                        from exc
                for i in dead:
                    print(f"rollout worker {i} died; restarting it with weights version {self.version}")
                    self.restarts[i] += 1
                    self.rollout[i] = self._spawn_rollout(i)
                    if self.published is not None:
                        self._load([i], self.version)
        return concat(parts)

    def _alive(self, handle: Handle) -> bool:
        try:
            gather([handle.submit("pid")], 10, "ping")
            return True
        except WorkerError:
            return False


def _columns(rows: list[PromptRow], n: int) -> dict[str, list]:
    keys = sorted({k for r in rows for k in r.columns})
    return {k: [r.columns.get(k) for r in rows for _ in range(n)] for k in keys}


def score(reward: CombinedReward, rows: list[PromptRow], rollout: Rollout, n: int):
    prompts = [r.prompt for r in rows for _ in range(n)]
    return reward(prompts, rollout.texts, completion_ids=rollout.completion_ids, **_columns(rows, n))


def evaluate(workers: Workers, reward: CombinedReward, rows: list[PromptRow], prompt_ids, recipe) -> dict[str, float]:
    """Greedy completions of the held-out prompts: mean reward per component (accuracy for math)."""
    sampling = SamplingConfig(recipe.rollout.max_new_tokens, 0.0, stop=recipe.rollout.stop)
    rollout = workers.generate(prompt_ids, 1, sampling)
    scored = score(reward, rows, rollout, 1)
    out = {"eval/reward": sum(scored.total) / len(scored.total)}
    for name, values in scored.components.items():
        kept = [v for v in values if v is not None]
        if kept:
            out[f"eval/{name}"] = sum(kept) / len(kept)
    out["eval/response_length"] = sum(len(c) for c in rollout.completion_ids) / len(rollout.completion_ids)
    return out


def run(recipe: GRPORecipe) -> Path:
    """Run one GRPO stage; returns the final checkpoint directory."""
    validate(recipe)
    a, t, r = recipe.algorithm, recipe.train, recipe.rollout
    output_dir = Path(t.output_dir)
    tokenizer = load_tokenizer(recipe.policy.name)
    train_rows, eval_rows = load_prompts(recipe.data.source, recipe.data.num_prompts, recipe.data.eval_prompts,
                                         recipe.data.seed, recipe.data.max_digits)
    train_ids = encode_prompts(tokenizer, [row.prompt for row in train_rows])
    eval_ids = encode_prompts(tokenizer, [row.prompt for row in eval_rows])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    if recipe.ray.enabled:
        import ray

        if not ray.is_initialized():
            ray.init(address=recipe.ray.address, num_cpus=recipe.ray.num_cpus, include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
    torch.manual_seed(t.seed)
    reward = build_reward(recipe)
    workers = Workers(recipe)
    order = PromptOrder(len(train_rows), recipe.data.seed)
    step = 0
    history: dict = {}
    checkpoints = list_checkpoints(output_dir) if t.resume else []
    if checkpoints:
        state = workers.learners_call("load", checkpoints[-1])[0]
        step, order.position, history = state["step"], state["data"]["position"], state["data"]["history"]
        log = output_dir / "metrics.jsonl"
        if log.exists():  # steps after the checkpoint are run again: drop their old lines
            kept = [x for x in log.read_text().splitlines() if json.loads(x)["step"] <= step]
            log.write_text("".join(x + "\n" for x in kept))
        print(f"resumed from {checkpoints[-1]} at step {step}")
    output_dir.mkdir(parents=True, exist_ok=True)
    workers.sync(step)
    if "start" not in history:
        history["start"] = evaluate(workers, reward, eval_rows, eval_ids, recipe)
    tracker = Tracker(output_dir / "tensorboard", t.steps, "grpo", enabled=True, tensorboard=recipe.log.tensorboard,
                      wandb_project=recipe.log.wandb_project, progress=recipe.log.progress, config=asdict(recipe))
    if step == 0:
        tracker.log(0, history["start"])
    tracker.advance(step)
    try:
        while step < t.steps:
            metrics: dict[str, float] = {}
            started = time.perf_counter()
            # 1. prompts and rollouts (dynamic sampling refills groups whose G rewards are all equal)
            rows, rollouts, scores, refills, dropped = [], [], [], 0, 0
            while len(rows) < a.prompts_per_step:
                picked = order.take(a.prompts_per_step - len(rows))
                sampling = SamplingConfig(r.max_new_tokens, r.temperature, r.top_p, r.top_k, r.stop,
                                          seed=t.seed * 1_000_003 + step * 101 + refills)
                t0 = time.perf_counter()
                rollout = workers.generate([train_ids[i] for i in picked], a.group_size, sampling)
                metrics["time/rollout_s"] = metrics.get("time/rollout_s", 0.0) + time.perf_counter() - t0
                metrics["rollout/tokens_per_second"] = rollout.new_tokens / max(rollout.seconds, 1e-9)
                t0 = time.perf_counter()
                picked_rows = [train_rows[i] for i in picked]
                scored = score(reward, picked_rows, rollout, a.group_size)
                metrics["time/reward_s"] = metrics.get("time/reward_s", 0.0) + time.perf_counter() - t0
                group = torch.tensor(scored.total).view(len(picked), a.group_size)
                keep = informative_groups(group) if a.dynamic_sampling and refills < a.max_refills else \
                    torch.ones(len(picked), dtype=torch.bool)
                dropped += int((~keep).sum())
                for g in keep.nonzero().squeeze(1).tolist():
                    rows.append(picked_rows[g])
                    rollouts.append((rollout, g))
                    scores.append((scored, g))
                refills += 1
            # 2. rewards -> advantages
            total = torch.tensor([[s.total[g * a.group_size + j] for j in range(a.group_size)] for s, g in scores])
            advantages = group_advantages(total, a.advantage_scale).flatten()
            merged = concat([rollout.rows(range(g * a.group_size, (g + 1) * a.group_size)) for rollout, g in rollouts])
            batch = build_batch(merged, advantages, pad_id, truncated_out=a.overlong_mask)
            # 3. learner update
            t0 = time.perf_counter()
            metrics.update(workers.learners_call("train_step", batch)[0])
            metrics["time/learner_s"] = time.perf_counter() - t0
            step += 1
            # 4. weights to the rollout workers
            metrics["time/weight_sync_s"] = workers.sync(step)
            # 5. metrics, checkpoint, evaluation
            lengths = torch.tensor([len(c) for c in merged.completion_ids], dtype=torch.float32)
            metrics.update({
                "reward/mean": float(total.mean()), "reward/std": float(total.std()) if total.numel() > 1 else 0.0,
                "advantage/mean": float(advantages.mean()), "advantage/std": float(advantages.std()),
                "advantage/abs_max": float(advantages.abs().max()),
                "rollout/response_length": float(lengths.mean()),
                "rollout/truncated_fraction": sum(f == "length" for f in merged.finish_reasons) / len(lengths),
                "rollout/zero_variance_groups": float((~informative_groups(total)).float().mean()),
                "rollout/dropped_groups": float(dropped),
                "time/step_s": time.perf_counter() - started,
            })
            for name in scores[0][0].components:
                values = [v for s, g in scores for v in s.components[name][g * a.group_size:(g + 1) * a.group_size]
                          if v is not None]
                if values:
                    metrics[f"reward/{name}"] = sum(values) / len(values)
            errors = sum(sum(s.errors.values()) for s, _ in scores)
            metrics["reward/errors"] = float(errors)
            if metrics.get("train/skipped_updates"):
                print(f"step {step}: non-finite loss or gradient; update skipped")
            if t.eval_every and step % t.eval_every == 0 and step < t.steps:
                metrics.update(evaluate(workers, reward, eval_rows, eval_ids, recipe))
            with (output_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            if step % recipe.log.every == 0 or step == t.steps:
                tracker.log(step, metrics)
            tracker.advance(step, f"reward {metrics['reward/mean']:.3f}")
            if t.save_every and step % t.save_every == 0 and step < t.steps:
                workers.learners_call("save", output_dir, step, {"position": order.position, "history": history},
                                      t.keep_checkpoints)
        history["end"] = evaluate(workers, reward, eval_rows, eval_ids, recipe)
        tracker.log(step, history["end"])
        final = Path(workers.learners_call("save_final", output_dir)[0])
    finally:
        tracker.close()
    (output_dir / "eval.json").write_text(json.dumps(history, indent=2))
    names = [k for k in history["end"] if k != "eval/response_length"]
    print("held-out (greedy): " + ", ".join(
        f"{k.removeprefix('eval/')} {history['start'].get(k, math.nan):.3f} -> {history['end'][k]:.3f}" for k in names))
    print(f"model saved to {final}")
    return final
