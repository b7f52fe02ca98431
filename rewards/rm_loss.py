"""Reward-model losses as pure tensor functions (reference §5).

Pair-wise Bradley-Terry, as TRL's RewardTrainer:
    L = -mean(log sigmoid(r_c - r_r - margin)) + lambda * mean((r_c + r_r)^2)   (optional centering)
Point-wise [interp]: binary cross-entropy on a pass/fail or correct/incorrect label:
    L = -mean(y log sigmoid(r) + (1 - y) log(1 - sigmoid(r)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coef: float = 0.0) -> torch.Tensor:
    """chosen, rejected: (B,) scalar rewards of the preferred and the other completion."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def pointwise_bce_loss(rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """rewards: (B,) logits; labels: (B,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(rewards, labels.float())


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Fraction of pairs ranked correctly (ties count half)."""
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())
