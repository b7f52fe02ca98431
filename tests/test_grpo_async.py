"""Off-policy GRPO (`algorithm.max_staleness: k`, `partial_rollouts`, grpo/prefetch.py): with frozen
weights it samples exactly what the synchronous run samples (same prompts, seeds, groups); with
learning, step s + 1 trains on samples of weights version s at k = 1, and never on a token more
than k versions old; partial rollouts tag each token with the version that sampled it (by hand in
the engine and the worker); a checkpoint taken while steps are sampled ahead resumes before the
oldest; the metrics by hand; bad settings fail in one line."""

from __future__ import annotations

import json

import pytest
import torch

from grpo import driver
from grpo.config import GRPORecipe
from grpo.prefetch import async_metrics
from rollout.engine import Rollout
from tests.test_grpo_driver import _recipe
from train.recipe import RecipeError, recipe_from_dict


def _steps(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward/mean"' in line]


def _versions(monkeypatch) -> list[int]:
    """The weights version of every batch the learners train on, in order."""
    seen = []
    real = driver.build_batch

    def spy(rollout, *args, **kwargs):
        seen.append(rollout.weights_version)
        return real(rollout, *args, **kwargs)

    monkeypatch.setattr(driver, "build_batch", spy)
    return seen


def test_with_frozen_weights_one_step_ahead_samples_what_the_synchronous_run_samples(tmp_path):
    frozen = {"optim": {"lr": 1e-30}, "train": {"steps": 4}}  # updates far below a float32 ulp: weights unchanged
    sync = driver.run(_recipe(tmp_path, "sync", **frozen))
    ahead = driver.run(_recipe(tmp_path, "ahead", algorithm={"max_staleness": 1}, **frozen))
    keys = ("reward/mean", "reward/std", "rollout/response_length", "advantage/abs_max")
    assert [[s[k] for k in keys] for s in _steps(tmp_path / "sync")] == \
        [[s[k] for k in keys] for s in _steps(tmp_path / "ahead")]
    from safetensors.torch import load_file

    a, b = load_file(sync / "model.safetensors"), load_file(ahead / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("placement", ["colocated", "hybrid"])  # weights offered / synced after the step in flight
def test_one_step_ahead_trains_on_the_previous_version_and_never_older(tmp_path, monkeypatch, placement):
    versions = _versions(monkeypatch)
    driver.run(_recipe(tmp_path, "ahead", algorithm={"max_staleness": 1}, train={"steps": 4},
                       ray={"enabled": False, "placement": placement}))
    assert versions == [0, 0, 1, 2]  # step 1 samples now; step s + 1 was sampled while step s trained
    steps = _steps(tmp_path / "ahead")
    assert [s["async/staleness"] for s in steps] == [0.0, 1.0, 1.0, 1.0]
    assert all(s["async/dropped_stale"] == 0.0 and 0.0 <= s["async/overlap"] <= 1.0 for s in steps)
    versions.clear()
    driver.run(_recipe(tmp_path, "sync", train={"steps": 3}))
    assert versions == [0, 1, 2] and "async/staleness" not in _steps(tmp_path / "sync")[0]


def test_a_checkpoint_taken_with_a_step_sampled_ahead_resumes_before_that_step(tmp_path):
    recipe = _recipe(tmp_path, "ahead", algorithm={"max_staleness": 1}, train={"steps": 3, "save_every": 2})
    driver.run(recipe)
    state = torch.load(tmp_path / "ahead" / "step-0000002" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["data"]["position"] == 2 * recipe.algorithm.prompts_per_step  # not 3 steps'
    metrics = _steps(tmp_path / "ahead")
    assert len(metrics) == 3


def test_async_metrics_by_hand():
    # trained at step 5 (learner version 5); sample 0 spans versions 3 and 4 (partial), sample 1's last token
    # is an environment's (not counted)
    rollout = Rollout([[1], [1]], [[7, 8, 9], [7, 8]], [[0.0] * 3, [0.0] * 2], ["stop"] * 2, ["", ""],
                      weights_version=3, loss_mask=[[True] * 3, [True, False]], token_versions=[[3, 3, 4], [4, 4]])
    got = async_metrics(rollout, 5, 2, 0, 0.5, 2.0)
    assert got == {"async/staleness": 2.0, "async/staleness_mean": 1.5, "async/staleness_d0": 0.0,
                   "async/staleness_d1": 0.5, "async/staleness_d2": 0.5, "async/partial_samples": 0.5,
                   "async/dropped_stale": 0.0, "async/wait_s": 0.5, "async/overlap": 0.75}
    assert async_metrics(rollout, 5, 2, 0, 3.0, 2.0)["async/overlap"] == 0.0  # waited longer than it took: clipped


@pytest.mark.parametrize("sections, message", [
    ({"algorithm": {"max_staleness": -1}}, "max_staleness must be an integer >= 0"),
    ({"algorithm": {"max_staleness": 1, "tis_cap": None}}, "max_staleness 1 trains on samples from earlier weights: "
                                                           "set tis_cap"),
    ({"algorithm": {"partial_rollouts": True}}, "partial_rollouts .* set max_staleness >= 1"),
    ({"algorithm": {"max_staleness": 2}, "ray": {"placement": "hybrid"}}, "need rollout workers of their own"),
    ({"algorithm": {"max_staleness": 1, "partial_rollouts": True}, "rollout": {"engine": "vllm"}},
     "run on our local engine"),
])
def test_bad_staleness_settings_fail_in_one_line(sections, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(GRPORecipe, sections)


def test_partial_rollout_tags_each_token_with_the_weights_that_sampled_it():
    """The engine takes new weights before decode step 3: tokens 0-2 keep version 0, the rest carry 7.
    With the same weights under a new version nothing else changes; with other weights the tokens
    before the swap are the old weights' and the log-probs after it are not."""
    from policy.load import load_policy
    from rollout.engine import SamplingConfig
    from rollout.local import LocalEngine

    model, tok = load_policy("tiny")
    sampling, prompts = SamplingConfig(max_new_tokens=8, temperature=1.0), [[5, 6, 7], [8, 9]]
    plain = LocalEngine(model, tok).generate(prompts, 2, sampling, seed=3)
    assert plain.token_versions is None

    def swap_at(engine, state, at=2):
        calls = []

        def hook():
            if len(calls) == at:
                engine.load_weights(state, 7)
            calls.append(1)
        return hook

    same = LocalEngine(model, tok)
    swapped = same.generate(prompts, 2, sampling, seed=3, between_steps=swap_at(same, model.state_dict()))
    assert swapped.completion_ids == plain.completion_ids and swapped.logprobs == plain.logprobs
    assert swapped.weights_version == 0 and swapped.oldest_version == 0
    for ids, versions in zip(swapped.completion_ids, swapped.token_versions, strict=True):
        assert versions == [0] * min(len(ids), 3) + [7] * max(len(ids) - 3, 0)
    assert any(len(ids) > 3 for ids in swapped.completion_ids)

    other = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    engine = LocalEngine(load_policy("tiny")[0], tok)
    changed = engine.generate(prompts, 2, sampling, seed=3, between_steps=swap_at(engine, other))
    long = [i for i, ids in enumerate(plain.completion_ids) if len(ids) > 3]
    for i in range(len(prompts) * 2):
        n = min(len(plain.completion_ids[i]), 3)
        assert changed.completion_ids[i][:n] == plain.completion_ids[i][:n]
        assert changed.logprobs[i][:n] == pytest.approx(plain.logprobs[i][:n], abs=1e-6)
    assert any(abs(changed.logprobs[i][3] - plain.logprobs[i][3]) > 1e-3 for i in long)


def test_a_rollout_worker_takes_an_offer_mid_rollout_and_proves_it(tmp_path):
    """An offer arriving during a rollout (here: at the worker's third between-steps check) lands before
    the next decode step, checksum and probe verified; tokens after it carry its version."""
    from grpo.workers import LearnerWorker, RolloutWorker

    recipe = _recipe(tmp_path, algorithm={"max_staleness": 1, "partial_rollouts": True},
                     rollout={"sampling": {"max_new_tokens": 8, "temperature": 1.0}})
    learner, worker = LearnerWorker(recipe, 0, 1, "127.0.0.1", 0), RolloutWorker(recipe, 0, 1)
    published = learner.publish_weights()
    published = {**published, "state": {k: v.clone() for k, v in published["state"].items()}}
    take, calls = worker._take_offer, []

    def take_after_an_offer():
        if len(calls) == 3:
            worker.offer_weights(published, 4)
        calls.append(1)
        take()

    worker._take_offer = take_after_an_offer
    rollout = worker.generate([[5, 6, 7]], 3, recipe.rollout.sampling, 0)
    assert worker.version == 4 and rollout.weights_version == 0
    # call 0 is before prefill (nothing offered yet); call 3 precedes decode step 3, after tokens 0-2
    for ids, versions in zip(rollout.completion_ids, rollout.token_versions, strict=True):
        assert versions == [0] * min(len(ids), 3) + [4] * max(len(ids) - 3, 0)
    bad = {**published, "checksum": "0" * len(published["checksum"])}
    with pytest.raises(Exception, match="arrived with checksum"):
        worker.offer_weights(bad, 5)


def test_k_steps_ahead_never_trains_on_tokens_older_than_k_versions(tmp_path, monkeypatch):
    seen = []
    real = driver.build_batch

    def spy(rollout, *args, **kwargs):
        seen.append(rollout)
        return real(rollout, *args, **kwargs)

    monkeypatch.setattr(driver, "build_batch", spy)
    driver.run(_recipe(tmp_path, "k2", algorithm={"max_staleness": 2, "partial_rollouts": True},
                       train={"steps": 5}))
    assert len(seen) == 5 and seen[0].oldest_version == 0
    for step, rollout in enumerate(seen):
        assert step - rollout.oldest_version <= 2
        for i in range(len(rollout.completion_ids)):
            versions = rollout.versions(i)
            assert versions == sorted(versions) and max(versions, default=0) <= step
    steps = _steps(tmp_path / "k2")
    assert all(s["async/dropped_stale"] == 0.0 and s["async/staleness"] <= 2.0 for s in steps)
    assert max(s["async/staleness"] for s in steps) == 2.0  # three steps queued at once: the last trains 2 late
    assert all(abs(sum(s[f"async/staleness_d{j}"] for j in range(3)) - 1.0) < 1e-9 for s in steps)


def test_with_frozen_weights_k_steps_ahead_with_partial_rollouts_samples_what_sync_samples(tmp_path):
    frozen = {"optim": {"lr": 1e-30}, "train": {"steps": 4}}
    driver.run(_recipe(tmp_path, "sync", **frozen))
    driver.run(_recipe(tmp_path, "k2", algorithm={"max_staleness": 2, "partial_rollouts": True}, **frozen))
    keys = ("reward/mean", "reward/std", "rollout/response_length", "advantage/abs_max")
    assert [[s[k] for k in keys] for s in _steps(tmp_path / "sync")] == \
        [[s[k] for k in keys] for s in _steps(tmp_path / "k2")]


def test_a_checkpoint_with_two_steps_queued_resumes_before_the_oldest(tmp_path):
    recipe = _recipe(tmp_path, "k2", algorithm={"max_staleness": 2}, train={"steps": 4, "save_every": 2})
    driver.run(recipe)
    state = torch.load(tmp_path / "k2" / "step-0000002" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["data"]["position"] == 2 * recipe.algorithm.prompts_per_step


def test_a_rollout_worker_runs_one_rollout_at_a_time(tmp_path):
    """A held-out evaluation from the driver's thread while a step sampled ahead is generating: the
    worker serialises them, so each gets what it would get alone (routing records included)."""
    from concurrent.futures import ThreadPoolExecutor

    from grpo.workers import RolloutWorker

    recipe = _recipe(tmp_path, algorithm={"max_staleness": 2}, rollout={"sampling": {"max_new_tokens": 12}})
    worker = RolloutWorker(recipe, 0, 1)
    calls = [([[5, 6, 7], [8, 9]], 4, 11), ([[3, 4]], 2, 12)]
    alone = [worker.generate(p, n, recipe.rollout.sampling, seed) for p, n, seed in calls]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda c: worker.generate(c[0], c[1], recipe.rollout.sampling, c[2]), calls))
    for a, b in zip(alone, together, strict=True):
        assert a.completion_ids == b.completion_ids and a.logprobs == b.logprobs
        assert all(torch.equal(x, y) for x, y in zip(a.routing, b.routing, strict=True))
