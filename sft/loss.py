"""SFT loss as pure tensor functions.

Token-level normalisation that does not depend on how a step's tokens are split: each
micro-batch contributes (sum of its target-token losses) / (target tokens in the whole step, over
all micro-batches and all data-parallel ranks). Data parallelism averages gradients over ranks,
so each rank multiplies by the world size; the resulting gradient is exactly that of the mean
loss over all target tokens of the step, whatever the micro-batch size, accumulation steps or
number of ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def target_token_loss_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over target tokens.

    logits (B, T, V) predict input_ids shifted by one; loss_mask (B, T) True = token t is a
    target (predicted from position t-1). Position 0 is never a target.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (losses * mask.reshape(-1)).sum()


def count_targets(loss_mask: torch.Tensor) -> int:
    """Target tokens in a batch (position 0 never counts)."""
    return int(loss_mask[:, 1:].sum())


def normalized_loss(loss_sum: torch.Tensor, step_targets: int, world_size: int = 1) -> torch.Tensor:
    """The micro-batch's share of the step's mean token loss, scaled for gradient averaging over ranks."""
    return loss_sum * world_size / max(step_targets, 1)
