"""`deepalign pipeline --seeds N`: every seed's run is seeded and kept apart, and the summary's
figures are the per-seed figures' means and Student-t intervals (checked by hand)."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from deepalign.cli import main
from deepalign.seeds import seeded
from evals.metrics import t_interval
from tests.test_grpo_driver import tiny_pipeline
from train.recipe import RecipeError, recipe_from_dict


def test_t_interval_by_hand():
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # sd 1, se 1/sqrt(3), t(2) = 4.303
    assert mean == 2.0 and math.isclose(high - mean, 4.303 / math.sqrt(3)) and math.isclose(mean - low, high - mean)
    mean, low, high = t_interval([0.5, 0.7])  # sd 0.1414, se 0.1, t(1) = 12.706
    assert math.isclose(mean, 0.6) and math.isclose(high, 0.6 + 1.2706)
    assert t_interval([0.25]) == (0.25, 0.25, 0.25)


def _pipeline(tmp_path):
    return tiny_pipeline(tmp_path / "runs", eval_prompts=3)


def test_seeded_runs_each_training_stage_with_its_seed_in_its_own_folder(tmp_path):
    from deepalign.pipeline import PipelineRecipe

    pipeline = recipe_from_dict(PipelineRecipe, {**_pipeline(tmp_path), "seeds": 3})
    two = seeded(pipeline, 2)
    assert two.output_dir == str(tmp_path / "runs" / "seed2") and two.seeds == 1
    sft, rl, cmp = two.stages
    assert sft.overrides[-2:] == ["policy.seed=2", "train.seed=2"] and rl.overrides[-1] == "train.seed=2"
    assert cmp.overrides == pipeline.stages[2].overrides
    with pytest.raises(RecipeError, match="seeds must be at least 1"):
        recipe_from_dict(PipelineRecipe, {**_pipeline(tmp_path), "seeds": 0})


def test_pipeline_over_two_seeds_reports_the_spread(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**_pipeline(tmp_path), "output_dir": str(tmp_path / "elsewhere")}))
    assert main(["pipeline", str(path), "--seeds", "2", f"output_dir={tmp_path / 'runs'}"]) == 0  # key after flag
    runs = [tmp_path / "runs" / f"seed{s}" for s in (0, 1)]
    w0, w1 = (load_file(str(r / "sft" / "final" / "model.safetensors")) for r in runs)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # seeded apart
    summary = json.loads((tmp_path / "runs" / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1]
    histories = [json.loads((r / "rl" / "eval.json").read_text()) for r in runs]
    row = next(r for r in summary["grpo"] if r["metric"] == "eval/reward")
    start = [h["start"]["eval/reward"] for h in histories]
    end = [h["end"]["eval/reward"] for h in histories]
    assert row["start"]["seeds"] == start and math.isclose(row["end"]["mean"], sum(end) / 2)
    change = [b - a for a, b in zip(start, end, strict=True)]
    assert math.isclose(row["change"]["high"] - row["change"]["mean"], 12.706 * abs(change[0] - change[1]) / 2)
    reports = [json.loads((r / "cmp" / "report.json").read_text()) for r in runs]
    assert len(reports[0]["tax"]) == 1  # rl vs sft on math
    tax = summary["compare"][0]["tax"][0]
    assert (tax["a"], tax["b"], tax["suite"]) == ("sft", "rl", "math")
    assert tax["delta"]["seeds"] == [r["tax"][0]["delta"] for r in reports]
    assert [p["verdict"] for p in tax["paired"]] == [r["tax"][0]["verdict"] for r in reports]
    scores = {(s["checkpoint"], s["suite"]): s["score"]["seeds"] for s in summary["compare"][0]["scores"]}
    assert scores[("rl", "math")] == [r["scores"][r["checkpoints"][1]]["math"]["score"] for r in reports]
    out = capsys.readouterr().out
    assert "Over 2 seeds (0, 1)" in out and "| rl vs sft | math |" in out
    assert (tmp_path / "runs" / "seeds.md").read_text() in out


def test_grpo_over_two_seeds_is_a_one_stage_pipeline(tmp_path, capsys):
    """`deepalign grpo RECIPE --seeds N`: each seed in TRAIN.OUTPUT_DIR/seed<s>/<recipe name>, the same
    start (the stage's policy), its own sampling; the summary is those runs' eval.json."""
    small = ["policy.name=tiny", "ray.enabled=false", "train.steps=1", "data.num_prompts=8", "data.eval_prompts=3",
             "algorithm.prompts_per_step=2", "algorithm.group_size=2", "rollout.sampling.max_new_tokens=4",
             "log.progress=false", "log.tensorboard=false", "train.threads=1"]
    out = tmp_path / "arith"
    assert main(["grpo", "recipes/demo/grpo_stage1.yaml", "--seeds", "2", *small, f"train.output_dir={out}"]) == 0
    runs = [out / f"seed{s}" / "grpo_stage1" for s in (0, 1)]
    w0, w1 = (load_file(str(r / "final" / "model.safetensors")) for r in runs)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # each seed samples and trains on its own
    histories = [json.loads((r / "eval.json").read_text()) for r in runs]
    assert histories[0]["start"] == histories[1]["start"]  # one starting policy
    summary = json.loads((out / "seeds.json").read_text())
    row = next(r for r in summary["grpo"] if r["metric"] == "eval/math_accuracy")
    assert row["stage"] == "grpo_stage1" and summary["compare"] == []
    assert row["end"]["seeds"] == [h["end"]["eval/math_accuracy"] for h in histories]
    assert "| grpo_stage1 | eval/math_accuracy |" in capsys.readouterr().out

