"""The shared training core: one optimiser set-up for every trainer, metrics.jsonl that survives torn
writes, and recipe sections whose defaults survive a partial override."""

import json
import math

import pytest
import torch

from train.config import LogConfig, OptimConfig
from train.distributed import DistInfo
from train.optim import make_optimizer, make_scheduler, optimizer_step
from train.recipe import RecipeError, recipe_from_dict
from train.tracking import MetricsFile


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_optimizer_step_clips_to_the_configured_norm():
    model = _model()
    opt = make_optimizer(model, OptimConfig(lr=0.1, grad_clip=1.0), DistInfo())
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.defaults["fused"]
    model.weight.grad = torch.full((2, 3), 2.0)  # norm sqrt(6 * 4) = 4.899 (bias has no grad)
    norm, skipped = optimizer_step(model, opt, OptimConfig(lr=0.1, grad_clip=1.0))
    assert norm == pytest.approx(math.sqrt(24)) and not skipped
    assert model.weight.grad is None  # zeroed after the step


def test_non_finite_loss_or_gradient_skips_the_update():
    for grad, loss in ((float("nan"), 0.0), (1.0, float("inf"))):
        model = _model()
        before = model.weight.detach().clone()
        opt = make_optimizer(model, OptimConfig(lr=0.1), DistInfo())
        model.weight.grad = torch.full((2, 3), grad)
        _, skipped = optimizer_step(model, opt, OptimConfig(lr=0.1), loss)
        assert skipped and torch.equal(model.weight, before)


def test_scheduler_warms_up_then_follows_the_schedule():
    model = _model()
    cfg = OptimConfig(lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.0)
    opt = make_optimizer(model, cfg, DistInfo())
    sched = make_scheduler(opt, cfg, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # warm-up (s+1)/2 -> 0.5, 1.0; then cosine over the 3 remaining spans: 1, 0.75, 0.25, 0
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.25, 0.0])


def test_optim_section_checks_its_values():
    with pytest.raises(ValueError, match="lr must be a positive number"):
        OptimConfig(lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        OptimConfig(betas=[0.9])
    with pytest.raises(ValueError, match="every must be at least 1"):
        LogConfig(every=0)


def test_a_partial_section_keeps_the_recipe_kinds_own_defaults():
    from rewards.config import RMRecipe

    recipe = recipe_from_dict(RMRecipe, {"optim": {"lr": 1e-3}})
    assert recipe.optim.lr == 1e-3 and recipe.optim.betas == [0.9, 0.999]  # RM's default, not the class's
    with pytest.raises(RecipeError, match=r"<recipe>: optim.lr must be a positive number, got -1.0"):
        recipe_from_dict(RMRecipe, {"optim": {"lr": -1}})


def test_metrics_file_drops_torn_lines_and_repeated_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 2, "a": 2.5}\n{"step": 3, "a"')
    log = MetricsFile(path)
    assert [r["step"] for r in log.records()] == [1, 2, 2]  # the torn last line is not a record
    log.keep_until(2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.5}]
    log.append(3, {"a": 3.0})
    assert [r["step"] for r in log.records()] == [1, 2, 3]
