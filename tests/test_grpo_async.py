"""One-step off-policy GRPO (`algorithm.max_staleness: 1`, grpo/prefetch.py): with frozen weights it
samples exactly what the synchronous run samples (same prompts, seeds, groups); with learning,
step s + 1 trains on samples of weights version s and never older; a checkpoint taken while a
step is sampled ahead resumes before it; bad settings fail in one line."""

from __future__ import annotations

import json

import pytest
import torch

from grpo import driver
from grpo.config import GRPORecipe
from grpo.prefetch import async_metrics
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


def test_one_step_ahead_trains_on_the_previous_version_and_never_older(tmp_path, monkeypatch):
    versions = _versions(monkeypatch)
    driver.run(_recipe(tmp_path, "ahead", algorithm={"max_staleness": 1}, train={"steps": 4}))
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
    assert async_metrics(1, 0, 0.5, 2.0) == {"async/staleness": 1.0, "async/dropped_stale": 0.0,
                                             "async/wait_s": 0.5, "async/overlap": 0.75}
    assert async_metrics(1, 0, 3.0, 2.0)["async/overlap"] == 0.0  # waited longer than it took: clipped


@pytest.mark.parametrize("algorithm, message", [
    ({"max_staleness": 2}, "max_staleness must be 0 .* or 1 .*, got 2; k > 1 and partial rollouts are not built"),
    ({"max_staleness": 1, "tis_cap": None}, "max_staleness 1 trains on samples from the previous weights: set tis_cap"),
])
def test_bad_staleness_settings_fail_in_one_line(algorithm, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(GRPORecipe, {"algorithm": algorithm})
