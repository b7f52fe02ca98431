"""`deepalign rm train`: train a reward model with the Bradley-Terry (pair-wise) or BCE
(point-wise) loss, log held-out pair-wise accuracy, save a sequence-classification checkpoint
that `reward_model` loads.

The reward model is the policy's backbone with a scalar head (transformers'
`*ForSequenceClassification`, score taken at the last non-padding token), initialised from the
policy weights: DeepSeek-V2 initialised its reward models from the SFT chat model (V2 §4).
Training runs under PyTorch's deterministic mode, so the same recipe gives the same RM.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from policy.config import PolicyConfig
from rewards.config import RMDataConfig, RMRecipe
from rewards.preferences import builtin_pairs
from rewards.reward_model import score_batch
from rewards.rm_loss import bradley_terry_loss, pairwise_accuracy, pointwise_bce_loss
from train.checkpoint import prepare_output_dir, save_final
from train.distributed import DistInfo
from train.optim import make_optimizer, make_scheduler, optimizer_step
from train.recipe import RecipeError
from train.tracking import Tracker


def load_rows(cfg: RMDataConfig, loss: str) -> list[dict]:
    from data_tools.readers import iter_rows
    from data_tools.schema import BadRowError

    if cfg.source.startswith("builtin:"):
        try:
            rows = builtin_pairs(cfg.source.removeprefix("builtin:"), cfg.num_examples, cfg.seed)
        except ValueError as exc:
            raise RecipeError(f"data.source: {exc}") from exc
        if loss == "pointwise":
            rows = [{"prompt": r["prompt"], "completion": r[k], "label": int(k == "chosen")}
                    for r in rows for k in ("chosen", "rejected")]
        return rows
    needed = ("prompt", "chosen", "rejected") if loss == "pairwise" else ("prompt", "completion", "label")
    rows = []
    for n, row in iter_rows(cfg.source):
        if isinstance(row, BadRowError):
            raise row
        if not isinstance(row, dict) or any(k not in row for k in needed):
            raise BadRowError(f"{cfg.source}:{n}: a {loss} row needs {list(needed)}")
        rows.append(row)
    return rows


def build_reward_model(policy: PolicyConfig):
    """(sequence classifier with one output, tokenizer), initialised from the policy's weights."""
    from transformers import AutoModelForSequenceClassification, DeepseekV2ForSequenceClassification

    from policy.load import checkpoint_folder, load_policy, load_tokenizer
    from policy.presets import DEEPSEEK_PRESETS

    tokenizer = load_tokenizer(policy.name)
    if policy.name in DEEPSEEK_PRESETS:
        lm, _ = load_policy(policy.name, seed=policy.seed)
        config = lm.config
        config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
        model = DeepseekV2ForSequenceClassification(config)
        missing, _ = model.load_state_dict({k: v for k, v in lm.state_dict().items() if k.startswith("model.")},
                                           strict=False)
        assert set(missing) == {"score.weight"}, missing
    else:
        from transformers.utils import logging as hf_logging

        # a causal LM read as a classifier: lm_head unused and the score head new, as intended; transformers
        # would print both as an UNEXPECTED / MISSING table
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(checkpoint_folder(policy.name), num_labels=1,
                                                                       dtype=policy.torch_dtype)
        finally:
            hf_logging.set_verbosity(verbosity)
        print(f"reward model: {policy.name} with a new scalar head (its lm_head is not used)")
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(policy.torch_dtype), tokenizer


def _score_rows(model, tokenizer, rows: list[dict], key: str, max_length: int) -> torch.Tensor:
    """Rewards of rows[i][key] as answers to rows[i]["prompt"]."""
    return score_batch(model, tokenizer, [r["prompt"] for r in rows], [r[key] for r in rows], max_length)


def evaluate(model, tokenizer, rows: list[dict], recipe: RMRecipe) -> dict[str, float]:
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for i in range(0, len(rows), recipe.train.batch_size):
            batch = rows[i : i + recipe.train.batch_size]
            if recipe.train.loss == "pairwise":
                chosen.append(_score_rows(model, tokenizer, batch, "chosen", recipe.data.max_length))
                rejected.append(_score_rows(model, tokenizer, batch, "rejected", recipe.data.max_length))
            else:
                scores = _score_rows(model, tokenizer, batch, "completion", recipe.data.max_length)
                labels = torch.tensor([float(r["label"]) for r in batch])
                chosen.append((scores > 0).float() == labels)
    model.train()
    if recipe.train.loss == "pairwise":
        c, r = torch.cat(chosen), torch.cat(rejected)
        return {"eval/pairwise_accuracy": pairwise_accuracy(c, r), "eval/reward_margin": float((c - r).mean())}
    return {"eval/accuracy": float(torch.cat(chosen).float().mean())}


@contextmanager
def deterministic_kernels():
    """PyTorch's deterministic mode for the block, restored after. A DeepSeek-V2 RM loaded from a
    checkpoint gets transformers' `grouped_mm` experts, whose CPU backward varies with the
    threads: two runs of the demo's RM recipe on 2 cores gave weights 1.5e-2 apart. The mode
    costs nothing measurable here (a tiny RM's forward and backward: 0.55 s with it, 0.58-0.62 s
    without)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def run(recipe: RMRecipe) -> Path:
    """`deepalign rm train`: the final checkpoint directory."""
    return train_reward_model(recipe)[0]


def train_reward_model(recipe: RMRecipe) -> tuple[Path, dict]:
    """Train; returns (final checkpoint directory, last evaluation metrics)."""
    with deterministic_kernels():
        return _train(recipe)


def _batch_loss(model, tokenizer, batch: list[dict], recipe: RMRecipe) -> tuple[torch.Tensor, dict[str, float]]:
    cfg, max_length = recipe.train, recipe.data.max_length
    if cfg.loss == "pairwise":
        chosen = _score_rows(model, tokenizer, batch, "chosen", max_length)
        rejected = _score_rows(model, tokenizer, batch, "rejected", max_length)
        margin = torch.tensor([float(r.get("margin", 0.0)) for r in batch]) if cfg.use_margin else None
        loss = bradley_terry_loss(chosen, rejected, margin, cfg.center_coef)
        return loss, {"train/loss": loss.item(), "train/accuracy": pairwise_accuracy(chosen, rejected)}
    scores = _score_rows(model, tokenizer, batch, "completion", max_length)
    loss = pointwise_bce_loss(scores, torch.tensor([float(r["label"]) for r in batch]))
    return loss, {"train/loss": loss.item()}


def _train(recipe: RMRecipe) -> tuple[Path, dict]:
    cfg = recipe.train
    output_dir = prepare_output_dir(cfg.output_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(recipe.data.seed)
    rows = load_rows(recipe.data, cfg.loss)
    rng.shuffle(rows)
    n_eval = max(1, int(len(rows) * recipe.data.eval_fraction))
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    model, tokenizer = build_reward_model(recipe.policy)
    model.train()
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_rows) / cfg.batch_size))
    optimizer = make_optimizer(model, recipe.optim, DistInfo())
    scheduler = make_scheduler(optimizer, recipe.optim, total)
    tracker = Tracker(output_dir / "tensorboard", total, "rm", recipe.log, config=asdict(recipe))
    metrics = evaluate(model, tokenizer, eval_rows, recipe)
    tracker.log(0, metrics)
    first = dict(metrics)
    try:
        for step in range(1, total + 1):
            start = ((step - 1) * cfg.batch_size) % len(train_rows)
            batch = [train_rows[(start + j) % len(train_rows)] for j in range(cfg.batch_size)]
            loss, train_metrics = _batch_loss(model, tokenizer, batch, recipe)
            loss.backward()
            grad_norm, skipped = optimizer_step(model, optimizer, recipe.optim, train_metrics["train/loss"])
            scheduler.step()
            if step % recipe.log.every == 0:
                tracker.log(step, {**train_metrics, "train/lr": scheduler.get_last_lr()[0],
                                   "train/grad_norm": grad_norm, "train/skipped_step": float(skipped)})
            if step % cfg.eval_every == 0 or step == total:
                metrics = evaluate(model, tokenizer, eval_rows, recipe)
                tracker.log(step, metrics)
            tracker.advance(step, f"loss {train_metrics['train/loss']:.3f}")
    finally:
        tracker.close()
    final = save_final(output_dir, model, tokenizer, DistInfo())
    key = "eval/pairwise_accuracy" if cfg.loss == "pairwise" else "eval/accuracy"
    print(f"held-out {key.split('/')[1]}: {first[key]:.3f} before, {metrics[key]:.3f} after; saved to {final}")
    return final, metrics
