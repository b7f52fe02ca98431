"""GRPO advantages with outcome supervision (one reward per sample), as DeepSeekMath §4.1 defines
them; plus Dr. GRPO's unscaled variant. (DSMath's process supervision needs step rewards, which no
reward here produces; it is not implemented.)

Outcome: A_i = (r_i - mean_g r) / (std + eps) for every token of sample i. `std` is the sample
(unbiased) standard deviation, as TRL computes it; eps = 1e-4 as TRL. `scale`:
- "group": std over the prompt's G samples (the GRPO paper);
- "batch": std over every reward in the batch (centred per group still; TRL's scale_rewards="batch");
- "none": no division (Dr. GRPO).
"""

from __future__ import annotations

from typing import Literal

import torch

Scale = Literal["group", "batch", "none"]


def group_advantages(rewards: torch.Tensor, scale: Scale = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards (P, G): P prompts, G samples each -> advantages (P, G)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (prompts, group), got shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(rewards[:, :1])
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
    else:
        raise ValueError(f"scale must be one of group, batch, none; got {scale!r}")
    return centred / (std + eps)
