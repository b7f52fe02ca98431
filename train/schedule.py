"""Learning-rate schedules: linear warm-up, then cosine, step or constant (multipliers of lr)."""

from __future__ import annotations

import math


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    min_ratio: float = 0.1,
    milestones: list[float] = (0.8, 0.9),
    gamma: float = 0.316,
) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based).

    cosine: from 1 after warm-up down to min_ratio at the last step.
    step: times gamma at each milestone (fraction of total steps); DeepSeek's pre-training
    used 0.8/0.9 with 0.316.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(step >= m * total_steps for m in milestones)
    if schedule == "cosine":
        span = max(total_steps - warmup_steps - 1, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r} (cosine, step, constant)")
