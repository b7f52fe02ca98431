"""What a GRPO run records and restores: the metrics of each step (TensorBoard / wandb and
`metrics.jsonl`), the held-out history (`eval.json`), and the resume point (step, prompt position,
history) kept with every checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from grpo.config import GRPORecipe
from grpo.groups import Groups, PromptOrder, Timer
from grpo.sampling import informative_groups
from train.checkpoint import latest_checkpoint
from train.tracking import MetricsFile, Tracker


@dataclass
class RunState:
    step: int
    order: PromptOrder
    history: dict = field(default_factory=dict)  # "start" / "end": held-out metrics
    resume_position: int | None = None  # with a step sampled ahead (max_staleness 1): the position before it

    def driver_state(self) -> dict:
        """What a checkpoint keeps; a step sampled ahead is not in it (a resumed run samples it again)."""
        position = self.order.position if self.resume_position is None else self.resume_position
        return {"position": position, "history": self.history}


def resume(cluster, recipe: GRPORecipe, num_prompts: int) -> RunState:
    """The run's state at its latest checkpoint (train.resume), or a fresh one."""
    output = Path(recipe.train.output_dir)
    state = RunState(0, PromptOrder(num_prompts, recipe.data.seed))
    checkpoint = latest_checkpoint(output) if recipe.train.resume else None
    if checkpoint is not None:
        saved = cluster.load(checkpoint)
        state.step, state.order.position, state.history = saved["step"], saved["data"]["position"], \
            saved["data"]["history"]
        print(f"resumed from {checkpoint} at step {state.step}")
    MetricsFile(output / "metrics.jsonl").keep_until(state.step)  # steps after it run again (all, if fresh)
    return state


def step_metrics(groups: Groups, advantages: torch.Tensor, learner: dict[str, float], timer: Timer) -> dict:
    """The step's scalars: rewards (total and per component), advantages, rollout shape, learner, time."""
    total, lengths = groups.rewards, torch.tensor([len(c) for c in groups.rollout.completion_ids], dtype=torch.float32)
    metrics = {f"time/{name}": seconds for name, seconds in timer.seconds.items()}
    metrics.update(learner)
    metrics.update({
        "rollout/tokens_per_second": groups.tokens_per_second,
        "reward/mean": float(total.mean()), "reward/std": float(total.std()) if total.numel() > 1 else 0.0,
        "advantage/mean": float(advantages.mean()), "advantage/std": float(advantages.std()),
        "advantage/abs_max": float(advantages.abs().max()),
        "rollout/response_length": float(lengths.mean()),
        "rollout/truncated_fraction": sum(f == "length" for f in groups.rollout.finish_reasons) / len(lengths),
        "rollout/zero_variance_groups": float((~informative_groups(total)).float().mean()),
        "rollout/dropped_groups": float(groups.dropped),
        "reward/errors": float(groups.errors),
    })
    for name, values in groups.components.items():
        kept = [v for v in values if v is not None]
        if kept:
            metrics[f"reward/{name}"] = sum(kept) / len(kept)
    metrics.update(groups.env_metrics)
    metrics["time/step_s"] = timer.elapsed()
    return metrics


class RunLog:
    """Per-step metrics to the tracker and metrics.jsonl; the held-out history to eval.json."""

    def __init__(self, recipe: GRPORecipe, step: int):
        self.recipe, self.output = recipe, Path(recipe.train.output_dir)
        self.metrics_file = MetricsFile(self.output / "metrics.jsonl")
        self.tracker = Tracker(self.output / "tensorboard", recipe.train.steps, "grpo", recipe.log,
                               config=asdict(recipe))
        self.tracker.advance(step)

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if metrics.get("train/skipped_updates"):
            print(f"step {step}: non-finite loss or gradient; update skipped")
        self.metrics_file.append(step, metrics)
        if step % self.recipe.log.every == 0 or step == self.recipe.train.steps:
            self.tracker.log(step, metrics)
        mfu = f", learner MFU {metrics['perf/learner_mfu']:.1%}" if "perf/learner_mfu" in metrics else ""
        self.tracker.advance(step, f"reward {metrics['reward/mean']:.3f}{mfu}")

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log(step, metrics)

    def close(self) -> None:
        self.tracker.close()

    def finish(self, history: dict, final: Path) -> None:
        (self.output / "eval.json").write_text(json.dumps(history, indent=2))
        names = [k for k in history["end"] if k != "eval/response_length"]
        print("held-out (greedy): " + ", ".join(
            f"{k.removeprefix('eval/')} {history['start'].get(k, math.nan):.3f} -> {history['end'][k]:.3f}"
            for k in names))
        print(f"model saved to {final}")
