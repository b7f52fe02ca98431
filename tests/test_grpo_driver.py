"""The GRPO driver in one process (ray.enabled false): a run, exact resume, NaN skip, reward and
recipe errors. tests/test_grpo_ray.py runs the same driver on Ray with faults."""

import json

import pytest
import torch

from deepalign.cli import main
from grpo.config import GRPORecipe
from grpo.driver import run
from rewards.combine import RewardError
from train.checkpoint import list_checkpoints
from train.recipe import RecipeError, recipe_from_dict


def _recipe(tmp_path, name="run", **sections):
    data = {
        "policy": {"name": "tiny"},
        "data": {"source": "builtin:arithmetic", "num_prompts": 40, "eval_prompts": 4, "max_digits": 1},
        "rewards": [{"name": "tests.grpo_helpers:length_reward"}],
        "algorithm": {"group_size": 4, "prompts_per_step": 2},
        "rollout": {"sampling": {"max_new_tokens": 8}},
        "ray": {"enabled": False},
        "train": {"output_dir": str(tmp_path / name), "steps": 3, "micro_batch_size": 4, "threads": 1},
        "optim": {"lr": 1e-3},
        "log": {"every": 1, "progress": False, "tensorboard": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(GRPORecipe, data)


def _weights(folder):
    from policy.load import load_policy

    return load_policy(str(folder))[0].state_dict()


def test_run_improves_an_easy_reward_and_writes_eval(tmp_path):
    recipe = _recipe(tmp_path, train={"steps": 8}, optim={"lr": 1e-2},
                     algorithm={"loss": {"beta": 0.0}, "prompts_per_step": 4},
                     rewards=[{"name": "tests.grpo_helpers:digits_reward", "alias": "digits"}])
    final = run(recipe)
    history = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert (final / "config.json").exists()
    assert set(history) == {"start", "end"} and "eval/digits" in history["end"]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 9))
    first, last = steps[0]["reward/mean"] + steps[1]["reward/mean"], steps[-1]["reward/mean"] + steps[-2]["reward/mean"]
    assert last > 2 * first  # more digits: the policy learned the reward


def test_resume_is_exact(tmp_path):
    straight = run(_recipe(tmp_path, "a"))
    interrupted = _recipe(tmp_path, "b", train={"steps": 2, "save_every": 1})
    run(interrupted)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-0000001"]
    resumed = run(_recipe(tmp_path, "b", train={"steps": 3, "save_every": 1}))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 2 ran twice; its first record was dropped on resume


def test_nan_loss_skips_the_update(tmp_path):
    from grpo.batch import GRPOBatch
    from grpo.learner import Learner

    learner = Learner(_recipe(tmp_path))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    batch = GRPOBatch(torch.randint(3, 200, (2, 6)), torch.ones(2, 6, dtype=torch.bool),
                      torch.ones(2, 3, dtype=torch.bool), torch.tensor([float("nan"), 1.0]), torch.zeros(2, 3))
    metrics = learner.train_step(batch)
    assert metrics["train/skipped_updates"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())


def test_failing_reward_names_reward_and_sample(tmp_path):
    recipe = _recipe(tmp_path, rewards=[{"name": "tests.grpo_helpers:broken_reward", "alias": "broken"}])
    with pytest.raises(RewardError, match=r"reward 'broken' failed on sample \d+: ValueError: cannot score"):
        run(recipe)


def test_bad_recipe_rejected_before_ray_starts(tmp_path, capsys):
    import ray

    path = tmp_path / "bad.yaml"
    path.write_text("algorithm: {group_size: 1}\n")
    assert main(["grpo", str(path)]) == 2
    assert "algorithm.group_size must be at least 2" in capsys.readouterr().err
    path.write_text("algorithm: {group_sise: 4}\n")
    assert main(["grpo", str(path)]) == 2
    assert "unknown key 'algorithm.group_sise'" in capsys.readouterr().err
    path.write_text("rewards: [{name: no_such_reward}]\n")
    assert main(["grpo", str(path)]) == 2
    assert "unknown reward 'no_such_reward'" in capsys.readouterr().err
    assert not ray.is_initialized()
    with pytest.raises(RecipeError, match="group_size"):
        run(_recipe(tmp_path, algorithm={"group_size": 1}))


def test_hybrid_placement_runs_the_engine_in_the_learner(tmp_path):
    straight = run(_recipe(tmp_path, "a"))
    hybrid = run(_recipe(tmp_path, "h", ray={"placement": "hybrid"}))
    a, h = _weights(straight), _weights(hybrid)
    assert all(torch.equal(a[k], h[k]) for k in a)  # the same samples and updates as separate workers
    with pytest.raises(RecipeError, match="hybrid"):
        run(_recipe(tmp_path, "bad", ray={"placement": "hybrid", "enabled": True, "learners": 2}))


def tiny_pipeline(output_dir, eval_prompts=2) -> dict:
    """SFT (2 steps) -> GRPO stage 1 (1 step) -> compare on math: the demo's recipes, shrunk."""
    small_grpo = ["ray.enabled=false", "train.steps=1", "data.num_prompts=8", f"data.eval_prompts={eval_prompts}",
                  "algorithm.prompts_per_step=2", "algorithm.group_size=2", "rollout.sampling.max_new_tokens=4",
                  "log.progress=false", "log.tensorboard=false", "train.threads=1"]
    return {"output_dir": str(output_dir), "stages": [
        {"name": "sft", "kind": "sft", "recipe": "recipes/demo/sft.yaml",
         "overrides": ["train.max_steps=2", "data.num_examples=64", "train.save_every=0", "log.progress=false",
                       "log.tensorboard=false", "train.threads=1"]},
        {"name": "rl", "kind": "grpo", "recipe": "recipes/demo/grpo_stage1.yaml",
         "overrides": ["policy.name=${sft}", *small_grpo]},
        {"name": "cmp", "kind": "compare", "recipe": "recipes/demo/compare.yaml",
         "checkpoints": ["${sft}", "${rl}"], "overrides": ["suites=[math]", "math_limit=4", "max_new_tokens=4"]},
    ]}


def test_pipeline_chains_stages_and_resumes_stage_by_stage(tmp_path, capsys):
    from deepalign.pipeline import PipelineRecipe, run_pipeline

    pipeline = recipe_from_dict(PipelineRecipe, tiny_pipeline(tmp_path))
    finals = run_pipeline(pipeline)
    assert (tmp_path / "rl" / "final" / "config.json").exists() and finals["cmp"].name == "report.json"
    config = json.loads((tmp_path / "rl" / "final" / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV2ForCausalLM"]
    report = json.loads(finals["cmp"].read_text())
    assert report["checkpoints"] == [str(tmp_path / "sft" / "final"), str(tmp_path / "rl" / "final")]
    capsys.readouterr()
    run_pipeline(pipeline)
    assert capsys.readouterr().out.count("done already") == 3
    bad = recipe_from_dict(PipelineRecipe, {"stages": [{"name": "rl", "kind": "grpo", "recipe":
                                                        "recipes/demo/grpo_stage1.yaml",
                                                        "overrides": ["policy.name=${sft}"]}]})
    with pytest.raises(RecipeError, match=r"\$\{sft\} does not name an earlier stage"):
        run_pipeline(bad)
