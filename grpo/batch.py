"""The learner's batch: rollouts turned into padded tensors, one row per sample.

Layout (as TRL's, policy/logprobs.py): [left-padded prompt | right-padded completion]; the
completion block starts at the same column for every row, so the log-probs of completion tokens
are the last C positions of the logits. Masks follow the project's one convention: True = the
token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.sampling import overlong_mask
from policy.logprobs import prompt_completion_rows
from rollout.engine import Rollout


@dataclass
class GRPOBatch:
    input_ids: torch.Tensor  # (N, P + C) prompt then completion token ids (pad elsewhere)
    attention_mask: torch.Tensor  # (N, P + C) bool, True = a real token
    completion_mask: torch.Tensor  # (N, C) bool, True = the completion token counts in the loss
    advantages: torch.Tensor  # (N,) or (N, C) per-sample (or per-token) advantage
    rollout_logp: torch.Tensor  # (N, C) log pi_rollout(token) as the engine sampled it
    old_logp: torch.Tensor | None = None  # (N, C) log pi_old: the learner's log-probs before the update
    ref_logp: torch.Tensor | None = None  # (N, C) log pi_ref
    routing: torch.Tensor | None = None  # (N, C, MoE layers, top_k) int16 the engine's experts, -1 = none

    @property
    def completion_width(self) -> int:
        return self.completion_mask.shape[1]

    def rows(self, index: slice) -> GRPOBatch:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return GRPOBatch(self.input_ids[index], self.attention_mask[index], self.completion_mask[index],
                         self.advantages[index], self.rollout_logp[index], pick(self.old_logp), pick(self.ref_logp),
                         pick(self.routing))


def build_batch(rollout: Rollout, advantages: torch.Tensor, pad_id: int, truncated_out: bool = False) -> GRPOBatch:
    """Every sample of `rollout` with its advantage (N,) or (N, C); truncated_out drops completions
    cut by the token budget from the loss (overlong masking); a rollout's loss_mask drops the
    environment's tokens of multi-turn trajectories."""
    ids, attention, completion_mask = prompt_completion_rows(rollout.prompt_ids, rollout.completion_ids, pad_id)
    rollout_logp = torch.zeros(completion_mask.shape)
    for j, logprobs in enumerate(rollout.logprobs):
        rollout_logp[j, : len(logprobs)] = torch.tensor(logprobs)
    if rollout.loss_mask is not None:  # environment turns inside multi-turn trajectories never count
        for j, keep in enumerate(rollout.loss_mask):
            completion_mask[j, : len(keep)] &= torch.tensor(keep, dtype=torch.bool)
    if truncated_out:
        completion_mask = overlong_mask(completion_mask, torch.tensor([r == "length" for r in rollout.finish_reasons]))
    routing = None
    if rollout.routing is not None and rollout.routing and rollout.routing[0].dim() == 3:
        layers, top_k = rollout.routing[0].shape[1:]
        routing = torch.full((len(rollout.routing), completion_mask.shape[1], layers, top_k), -1, dtype=torch.int16)
        for j, r in enumerate(rollout.routing):
            routing[j, : r.shape[0]] = r
    return GRPOBatch(ids, attention, completion_mask, advantages.float(), rollout_logp, routing=routing)
