"""What the batch keeps before the loss: DAPO's dynamic sampling and overlong masking.

- `informative_groups`: groups whose G rewards are not all equal; a zero-variance group has zero
  advantage everywhere and only dilutes the batch. The driver drops them and samples more
  prompts until the batch is full (or `max_refills` is spent).
- `overlong_mask`: completions cut by the token budget (no EOS) are left out of the loss, so
  the policy is not punished for an answer it had no room to finish.
"""

from __future__ import annotations

import torch


def informative_groups(rewards: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """rewards (P, G) -> (P,) bool, True where the group's rewards are not all equal."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > tol


def overlong_mask(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """mask (N, T) with the rows of truncated completions (N,) set to False."""
    return mask & ~truncated.unsqueeze(1)
