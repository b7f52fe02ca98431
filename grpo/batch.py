"""The learner's batch: rollouts turned into padded tensors, one row per sample.

Layout (as TRL's): [left-padded prompt | right-padded completion]; the completion block starts
at the same column for every row, so the log-probs of completion tokens are the last C
positions of the logits. Masks follow the project's one convention: True = the token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.sampling import overlong_mask
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

    @property
    def completion_width(self) -> int:
        return self.completion_mask.shape[1]

    def rows(self, index: slice) -> GRPOBatch:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return GRPOBatch(self.input_ids[index], self.attention_mask[index], self.completion_mask[index],
                         self.advantages[index], self.rollout_logp[index], pick(self.old_logp), pick(self.ref_logp))


def build_batch(rollout: Rollout, advantages: torch.Tensor, pad_id: int, keep: torch.Tensor | None = None,
                truncated_out: bool = False) -> GRPOBatch:
    """Samples of `rollout` (rows where keep is True) with their advantages (N,)."""
    rows = range(len(rollout.completion_ids)) if keep is None else keep.nonzero().squeeze(1).tolist()
    prompts = [rollout.prompt_ids[i] for i in rows]
    completions = [rollout.completion_ids[i] for i in rows]
    p = max(len(x) for x in prompts)
    c = max(1, max(len(x) for x in completions))
    n = len(rows)
    ids = torch.full((n, p + c), pad_id, dtype=torch.long)
    attention = torch.zeros(n, p + c, dtype=torch.bool)
    completion_mask = torch.zeros(n, c, dtype=torch.bool)
    rollout_logp = torch.zeros(n, c)
    for j, i in enumerate(rows):
        prompt, completion = prompts[j], completions[j]
        ids[j, p - len(prompt) : p] = torch.tensor(prompt)
        attention[j, p - len(prompt) : p] = True
        if completion:
            ids[j, p : p + len(completion)] = torch.tensor(completion)
            attention[j, p : p + len(completion)] = True
            completion_mask[j, : len(completion)] = True
            rollout_logp[j, : len(completion)] = torch.tensor(rollout.logprobs[i])
    if truncated_out:
        truncated = torch.tensor([rollout.finish_reasons[i] == "length" for i in rows])
        completion_mask = overlong_mask(completion_mask, truncated)
    adv = advantages[rows] if keep is not None else advantages
    return GRPOBatch(ids, attention, completion_mask, adv.float(), rollout_logp)
