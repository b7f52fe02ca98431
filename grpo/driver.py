"""The GRPO driver: the loop and nothing else (DSMath Alg. 1 with I = 1).

    for each step: groups = G samples per prompt, scored (grpo/groups.py)
                   advantages = group-normalised rewards (grpo/advantages.py)
                   learners take mu updates on the batch (grpo/learner.py, on grpo/cluster.py)
                   weights sync learners -> rollout workers (versioned, checksummed, with a timeout)
                   metrics, held-out evaluation, checkpoint (grpo/run_log.py)

Ctrl-C stops after the current step, with a checkpoint when the run saves them (train/interrupt.py).

Rewards run in the driver (plain functions; code_tests brings its own sandbox pool), except
reward models marked `ray_actor`, which Ray actors serve. Departures from the paper: the
reference is fixed for the whole stage (the paper resets pi_ref each outer iteration), and the
reward model is not retrained during RL.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grpo import cluster as workers
from grpo.advantages import group_advantages
from grpo.batch import build_batch
from grpo.config import GRPORecipe
from grpo.groups import PromptSet, Timer, evaluate, sample_groups
from grpo.parity import check_parity
from grpo.prefetch import Prefetch, async_metrics
from grpo.run_log import RunLog, RunState, resume, step_metrics
from grpo.stage import build_scorer, preflight, prompt_sets
from train.checkpoint import prepare_output_dir
from train.interrupt import stop_on_interrupt, stopped


def step(cluster, reward, prompts: PromptSet, state: RunState, recipe: GRPORecipe, pad_id: int,
         prefetch: Prefetch | None = None) -> dict[str, float]:
    """One GRPO step: groups, advantages, the learners' update, the weight sync; its metrics. With
    `prefetch` (max_staleness k) the groups are the oldest of those queued during earlier steps, the
    next k steps' are sampled while the learners train on these, and the new weights are offered to
    the rollout workers rather than synced (grpo/prefetch.py)."""
    timer, bound = Timer(), recipe.algorithm.max_staleness
    taken = prefetch.take() if prefetch is not None else None
    groups, sampled, waited = taken if taken is not None else (None, timer, 0.0)
    stale_dropped = 0
    if groups is not None and state.step - groups.rollout.oldest_version > bound:
        stale_dropped, groups = len(groups.rollout.completion_ids), None  # older than the bound: sample afresh
        prefetch.wait()  # with nothing in flight, so that this thread may sample
    if groups is None:
        groups, sampled = sample_groups(cluster, reward, prompts, state.order, recipe, state.step, timer), timer
    if prefetch is not None:
        _queue_ahead(prefetch, cluster, reward, prompts, state, recipe)
    advantages = group_advantages(groups.rewards, recipe.algorithm.advantage_scale).flatten()
    batch = build_batch(groups.rollout, advantages, pad_id, truncated_out=recipe.algorithm.overlong_mask)
    with timer("learner_s"):
        learner = cluster.train_step(batch)
    state.step += 1
    offer = prefetch is not None and cluster.offers
    if prefetch is not None and not offer:
        waited += prefetch.wait()[0]  # hybrid or vLLM: the step in flight ends before the sync
    with timer("weight_sync_s"):
        if offer:
            cluster.offer(state.step)  # taken by the engine at its next rollout (or decode step), proven there
            probe_diff = groups.rollout.sync_probe_diff
        else:
            probe_diff = cluster.sync(state.step)
    if sampled is not timer:  # sampled during earlier steps: its rollout / reward seconds
        timer.seconds.update(sampled.seconds)
    metrics = {**step_metrics(groups, advantages, learner, timer), "rollout/sync_probe_diff": probe_diff}
    if prefetch is not None:
        metrics.update(async_metrics(groups.rollout, state.step - 1, bound, stale_dropped, waited,
                                     sum(sampled.seconds.values())))
    return metrics


def _queue_ahead(prefetch: Prefetch, cluster, reward, prompts: PromptSet, state: RunState, recipe: GRPORecipe) -> None:
    """Queue the sampling of the steps after this one, up to max_staleness ahead (and the run's end)."""
    last = min(state.step + recipe.algorithm.max_staleness, recipe.train.steps - 1)
    for nxt in range(state.step + 1 + prefetch.queued, last + 1):
        prefetch.start(lambda t, nxt=nxt: sample_groups(cluster, reward, prompts, state.order, recipe, nxt, t),
                       state.order)


def run(recipe: GRPORecipe) -> Path:
    """Run one GRPO stage; returns the final checkpoint directory."""
    t = recipe.train
    output = prepare_output_dir(t.output_dir)
    preflight(recipe)  # every reward resolves before Ray starts or a model loads
    train_prompts, eval_prompts, pad_id = prompt_sets(recipe)
    print(f"prompts: {len(train_prompts.rows)} training, {len(eval_prompts.rows)} held out; loading the policy",
          flush=True)
    workers.start(recipe.ray)
    torch.manual_seed(t.seed)
    reward = build_scorer(recipe)  # the combined reward, or an environment's episodes
    cluster = workers.Cluster(recipe)
    print(cluster.describe())
    state = resume(cluster, recipe, len(train_prompts.rows))
    cluster.sync(state.step)
    if "start" not in state.history:
        print(f"held-out evaluation before step 1 ({len(eval_prompts.rows)} prompts, greedy)", flush=True)
        state.history["start"] = evaluate(cluster, reward, eval_prompts, recipe)
    log = RunLog(recipe, state.step)
    log.evaluation(state.step, {**(state.history["start"] if state.step == 0 else {}),
                                **check_parity(cluster, eval_prompts, recipe, pad_id, state.step)})
    prefetch = Prefetch(recipe.algorithm.max_staleness) if recipe.algorithm.max_staleness else None
    try:
        with stop_on_interrupt() as stop:
            while state.step < t.steps:
                metrics = step(cluster, reward, train_prompts, state, recipe, pad_id, prefetch)
                state.resume_position = prefetch.resume_position if prefetch is not None else None
                if t.eval_every and state.step % t.eval_every == 0 and state.step < t.steps:
                    metrics.update(evaluate(cluster, reward, eval_prompts, recipe))
                if recipe.rollout.parity_every and state.step % recipe.rollout.parity_every == 0:
                    metrics.update(check_parity(cluster, eval_prompts, recipe, pad_id, state.step))
                log.step(state.step, metrics)
                if stop and state.step < t.steps:
                    raise stopped(state.step, cluster.save(output, state.step, state.driver_state(),
                                                           t.keep_checkpoints) if t.save_every else None)
                if t.save_every and state.step % t.save_every == 0 and state.step < t.steps:
                    cluster.save(output, state.step, state.driver_state(), t.keep_checkpoints)
        state.history["end"] = evaluate(cluster, reward, eval_prompts, recipe)
        log.evaluation(state.step, state.history["end"])
        final = cluster.save_final(output)
    finally:
        log.close()
        if prefetch is not None:
            prefetch.close()
    log.finish(state.history, final)
    return final
