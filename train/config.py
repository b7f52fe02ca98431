"""The recipe sections every trainer shares: `optim` (AdamW and its learning-rate schedule) and
`log` (TensorBoard, wandb, progress). Each recipe kind picks its own defaults
(e.g. `field(default_factory=lambda: OptimConfig(lr=1e-6))`); the checks live here, once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay; the learning rate follows `schedule` after `warmup_steps`
    of linear warm-up (train/schedule.py). grad_clip: max global gradient norm, 0 = no clipping.
    A step whose loss or gradient norm is not finite is skipped and counted (train/optim.py)."""

    lr: float = 5e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    step_milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    step_gamma: float = 0.316

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay, grad_clip and warmup_steps must not be negative")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class LogConfig:
    """every: log metrics every N steps. progress: a live bar on a terminal, one line per
    `progress_every_s` seconds when output goes to a file. peak_tflops: the peak the learners' MFU
    is taken against (null = measured: the best dense matmul of the training dtype, policy/flops.py)."""

    every: int = 10
    tensorboard: bool = True
    wandb_project: str | None = None
    progress: bool = True
    progress_every_s: float = 30.0
    peak_tflops: float | None = None

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be positive (or null = measured), got {self.peak_tflops}")
