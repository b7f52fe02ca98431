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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from deepalign.recipe import RecipeError
from policy.config import PolicyConfig
from rewards.preferences import builtin_pairs
from rewards.reward_model import score_batch
from rewards.rm_loss import bradley_terry_loss, pairwise_accuracy, pointwise_bce_loss
from sft.config import LogConfig


@dataclass
class RMDataConfig:
    """source: `builtin:helpful|safety|reasoning` or a JSONL of {"prompt","chosen","rejected"
    [,"margin"]} rows (or {"prompt","completion","label"} with loss: pointwise)."""

    source: str = "builtin:helpful"
    num_examples: int = 2000
    eval_fraction: float = 0.1
    max_length: int = 256
    seed: int = 0


@dataclass
class RMTrainConfig:
    output_dir: str = "runs/rm"
    loss: Literal["pairwise", "pointwise"] = "pairwise"
    use_margin: bool = False
    center_coef: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    eval_every: int = 50
    seed: int = 0
    threads: int | None = None


@dataclass
class RMRecipe:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: RMDataConfig = field(default_factory=RMDataConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


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
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint_folder(policy.name), num_labels=1,
                                                                   dtype=policy.torch_dtype)
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


def train_reward_model(recipe: RMRecipe) -> tuple[Path, dict]:
    """Train; returns (final checkpoint directory, last evaluation metrics)."""
    with deterministic_kernels():
        return _train(recipe)


def _train(recipe: RMRecipe) -> tuple[Path, dict]:
    from sft.checkpoint import save_final
    from sft.distributed import DistInfo
    from sft.schedule import lr_multiplier
    from sft.tracking import Tracker

    cfg = recipe.train
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total, cfg.warmup_steps,
                                                                                     "cosine"))
    output_dir = Path(cfg.output_dir)
    tracker = Tracker(output_dir / "tensorboard", total, "rm", tensorboard=recipe.log.tensorboard,
                      wandb_project=recipe.log.wandb_project, progress=recipe.log.progress, config=asdict(recipe))
    metrics = evaluate(model, tokenizer, eval_rows, recipe)
    tracker.log(0, metrics)
    first = dict(metrics)
    try:
        for step in range(1, total + 1):
            start = ((step - 1) * cfg.batch_size) % len(train_rows)
            batch = [train_rows[(start + j) % len(train_rows)] for j in range(cfg.batch_size)]
            if cfg.loss == "pairwise":
                chosen = _score_rows(model, tokenizer, batch, "chosen", recipe.data.max_length)
                rejected = _score_rows(model, tokenizer, batch, "rejected", recipe.data.max_length)
                margin = torch.tensor([float(r.get("margin", 0.0)) for r in batch]) if cfg.use_margin else None
                loss = bradley_terry_loss(chosen, rejected, margin, cfg.center_coef)
                train_metrics = {"train/loss": loss.item(), "train/accuracy": pairwise_accuracy(chosen, rejected)}
            else:
                scores = _score_rows(model, tokenizer, batch, "completion", recipe.data.max_length)
                loss = pointwise_bce_loss(scores, torch.tensor([float(r["label"]) for r in batch]))
                train_metrics = {"train/loss": loss.item()}
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % recipe.log.every == 0:
                tracker.log(step, {**train_metrics, "train/lr": scheduler.get_last_lr()[0]})
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
