"""Engine-learner parity: does the rollout engine give the tokens it samples the log-probabilities
the learner gives them? A gate before step 1 (and every `rollout.parity_every` steps): the engine
samples completions of held-out prompts, the learner scores the same tokens, and the run stops
with a clear message when the mismatch is above `rollout.parity_max_kl`. Kernels, dtypes
(a bf16 engine copy) or a broken weight path all show up here before training on them.

    d = log p_learner - log p_engine per sampled token;  r = exp(d)
    mismatch KL(engine || learner) ~= mean(r - 1 - d)   (k3 on the engine's samples, >= 0)
"""

from __future__ import annotations

import torch

from grpo.batch import build_batch
from grpo.config import GRPORecipe
from grpo.groups import PromptSet

PROMPTS, SAMPLES = 8, 2


class ParityError(RuntimeError):
    """Engine and learner disagree beyond the budget; the message gives the figures."""


def parity_metrics(engine_logp: torch.Tensor, learner_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """engine_logp, learner_logp (N, C) per token; mask (N, C) True = a sampled token."""
    d = (learner_logp.float() - engine_logp.float())[mask]
    if d.numel() == 0:
        return {"parity/mismatch_kl": 0.0, "parity/mean_abs_logp_diff": 0.0, "parity/max_abs_logp_diff": 0.0}
    return {"parity/mismatch_kl": float((d.exp() - 1 - d).mean()), "parity/mean_abs_logp_diff": float(d.abs().mean()),
            "parity/max_abs_logp_diff": float(d.abs().max())}


def check_parity(cluster, prompts: PromptSet, recipe: GRPORecipe, pad_id: int, step: int) -> dict[str, float]:
    rollout = cluster.generate(prompts.ids[:PROMPTS], SAMPLES, recipe.rollout.sampling, seed=7919 + step)
    batch = build_batch(rollout, torch.zeros(len(rollout.completion_ids)), pad_id)
    metrics = parity_metrics(batch.rollout_logp, cluster.score(batch), batch.completion_mask)
    if not metrics["parity/mismatch_kl"] <= recipe.rollout.parity_max_kl:
        raise ParityError(
            f"rollout engine and learner disagree at step {step}: mismatch KL {metrics['parity/mismatch_kl']:.3g} per "
            f"token > rollout.parity_max_kl {recipe.rollout.parity_max_kl:g} (mean |delta log p| "
            f"{metrics['parity/mean_abs_logp_diff']:.3g}, max {metrics['parity/max_abs_logp_diff']:.3g}); check "
            "rollout.dtype and the engine, or raise the budget")
    return metrics
