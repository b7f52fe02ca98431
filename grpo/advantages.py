"""GRPO advantages: outcome supervision (one reward per sample) and process supervision (a reward
per reasoning step), as DeepSeekMath §4.1 defines them; plus Dr. GRPO's unscaled variant.

Outcome: A_i = (r_i - mean_g r) / (std + eps) for every token of sample i. `std` is the sample
(unbiased) standard deviation, as TRL computes it; eps = 1e-4 as TRL. `scale`:
- "group": std over the prompt's G samples (the GRPO paper);
- "batch": std over every reward in the batch (centred per group still; TRL's scale_rewards="batch");
- "none": no division (Dr. GRPO).

Process: all step rewards of the G samples are normalised together, r~ = (r - mean R) / std R,
and A_{i,t} = sum of r~ over the steps of sample i that end at or after token t.
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


def process_advantages(
    step_rewards: list[list[float]], step_ends: list[list[int]], length: int, eps: float = 1e-4
) -> torch.Tensor:
    """Per-token advantages (G, length) for one group.

    step_rewards[i][j]: the reward of step j of sample i; step_ends[i][j]: the index of the
    completion token where that step ends. Tokens after a sample's last step get 0.
    """
    flat = torch.tensor([r for rs in step_rewards for r in rs], dtype=torch.float32)
    if flat.numel() == 0:
        return torch.zeros(len(step_rewards), length)
    std = flat.std() if flat.numel() > 1 else torch.zeros(())
    mean = flat.mean()
    out = torch.zeros(len(step_rewards), length)
    for i, (rewards, ends) in enumerate(zip(step_rewards, step_ends, strict=True)):
        if len(rewards) != len(ends):
            raise ValueError(f"sample {i}: {len(rewards)} step rewards but {len(ends)} step ends")
        for r, end in zip(rewards, ends, strict=True):
            # step j counts for every token t <= end(j)
            out[i, : min(end, length - 1) + 1] += (r - mean) / (std + eps)
    return out
