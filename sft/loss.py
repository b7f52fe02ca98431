"""SFT loss as pure tensor functions.

Token-level normalisation that does not depend on how a step's tokens are split: each
micro-batch contributes (sum of its target-token losses) / (target tokens in the whole step, over
all micro-batches and all data-parallel ranks). Data parallelism averages gradients over ranks,
so each rank multiplies by the world size; the resulting gradient is exactly that of the mean
loss over all target tokens of the step, whatever the micro-batch size, accumulation steps or
number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from policy.load import base_model


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


def head_loss_sum(
    hidden: torch.Tensor, head_weight: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """target_token_loss_sum computed from the final hidden states (B, T, H), applying the output
    head (V, H) only at positions whose next token is a target: with assistant-only loss most of
    the (B, T, V) logits are never needed."""
    mask = loss_mask[:, 1:]
    logits = hidden[:, :-1][mask] @ head_weight.t()
    return F.cross_entropy(logits.float(), input_ids[:, 1:][mask], reduction="sum")


@contextmanager
def final_hidden_states(model) -> Iterator[dict]:
    """Capture the output of the decoder's final norm during a forward (key "hidden").

    Pair it with `logits_to_keep=torch.empty(0, dtype=torch.long)` so the model skips its own head.
    Yields None when the model has no `model.norm` (then use the full logits).
    """
    base = base_model(model)
    norm = getattr(getattr(base, "model", None), "norm", None)
    if norm is None:
        yield None
        return
    captured: dict = {}
    handle = norm.register_forward_hook(lambda _m, _i, out: captured.__setitem__("hidden", out))
    try:
        yield captured
    finally:
        handle.remove()
