"""The GRPO policy loss, as a pure function of per-token log-probabilities.

    loss = aggregate( -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) * w  +  beta * D )

rho = pi_theta / pi_old per token (or one ratio per sequence, exp of the mean per-token log
ratio, with `ratio_level="sequence"`: V2 §4.2 writes the sequence-level form); D is the k3
estimator of KL(pi_theta || pi_ref) per token, in the loss and not in the reward (DSMath §4.1);
w are optional importance-sampling weights between the rollout engine and the learner, for the
mismatch between their log-probs: truncated (min(ratio, cap)), masked (0 above the cap, per token
or per sequence) or IcePop's (0 outside [low, high]).

Aggregation over the (N, T) tokens that count (mask True):
- "seq_mean": mean over sequences of each sequence's token mean (the GRPO paper, TRL "grpo");
- "token_mean": sum over all tokens / number of tokens (DAPO, TRL "bnpo"/"dapo");
- "constant": sum / (N * max_tokens) (Dr. GRPO, TRL "dr_grpo").
To accumulate over micro-batches pass the whole batch's `num_sequences` / `num_tokens`: the
micro-batch losses then add up to the loss of the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["seq_mean", "token_mean", "constant"]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(x) - x - 1 with x = ref_logp - logp (>= 0)."""
    x = ref_logp - logp
    return torch.exp(x) - x - 1


def truncated_is_weights(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_learner / pi_rollout, cap) per token, without gradient (corrects engine mismatch)."""
    return torch.exp(learner_logp.detach() - rollout_logp.detach()).clamp(max=cap)


def masked_is_weights(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float,
                      level: Literal["token", "sequence"] = "token") -> torch.Tensor:
    """Masked importance sampling: the ratio pi_learner / pi_rollout where it is at most `cap`, else 0
    (the token leaves the loss instead of being clipped to the cap). level "sequence": one ratio per
    sequence, the product over its tokens (mask True), given to every token, the whole sequence 0
    when it exceeds the cap. Without gradient."""
    log_ratio = (learner_logp.detach() - rollout_logp.detach()) * mask
    if level == "sequence":
        ratio = log_ratio.sum(1, keepdim=True).exp().expand_as(log_ratio)
    else:
        ratio = log_ratio.exp()
    return torch.where(ratio <= cap, ratio, torch.zeros_like(ratio)) * mask


def icepop_weights(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """IcePop's double-sided mask: the per-token ratio pi_learner / pi_rollout where it lies in
    [low, high], 0 outside (tokens the engines disagree on too much leave the loss). Without gradient."""
    ratio = torch.exp(learner_logp.detach() - rollout_logp.detach())
    return torch.where((ratio >= low) & (ratio <= high), ratio, torch.zeros_like(ratio))


def mismatch_weights(learner_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                     cap: float, level: str = "token", low: float = 0.5, high: float = 5.0) -> torch.Tensor:
    """The engine-mismatch weights of `algorithm.mismatch`: truncate (TIS), mask (MIS, per token or
    sequence) or icepop; 0 where mask is False."""
    if mode == "truncate":
        return truncated_is_weights(learner_logp, rollout_logp, cap) * mask
    if mode == "mask":
        return masked_is_weights(learner_logp, rollout_logp, mask, cap, level)
    if mode == "icepop":
        return icepop_weights(learner_logp, rollout_logp, low, high) * mask
    raise ValueError(f"unknown mismatch correction {mode!r}")


@dataclass
class LossConfig:
    """The recipe's `algorithm.loss` section. eps_low / eps_high: the clip range [1 - eps_low,
    1 + eps_high] of the ratio (DAPO's clip-higher when eps_high > eps_low); beta: the k3 KL's
    weight (0 = no reference model); aggregation and ratio_level as above."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.04
    aggregation: Aggregation = "seq_mean"
    ratio_level: Literal["token", "sequence"] = "token"

    def __post_init__(self):
        if not 0.0 <= self.eps_low < 1.0 or self.eps_high < 0.0:
            raise ValueError(f"eps_low must be in [0, 1) and eps_high >= 0, got {self.eps_low}, {self.eps_high}")
        if not (math.isfinite(self.beta) and self.beta >= 0.0):
            raise ValueError(f"beta must be a number >= 0, got {self.beta}")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    max_tokens: int | None = None,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce per-token values (N, T) over the tokens where mask is True."""
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    n = num_sequences if num_sequences is not None else per_token.shape[0]
    if mode == "seq_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / max(n, 1)
    if mode == "token_mean":
        tokens = num_tokens if num_tokens is not None else mask.sum().item()
        return masked.sum() / max(tokens, 1)
    if mode == "constant":
        if not max_tokens:
            raise ValueError("aggregation 'constant' needs max_tokens (the generation budget)")
        return masked.sum() / (max(n, 1) * max_tokens)
    raise ValueError(f"aggregation must be one of seq_mean, token_mean, constant; got {mode!r}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
    ref_logp: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, metrics) for one (micro-)batch.

    logp, old_logp, ref_logp, is_weights: (N, T) per completion token; advantages: (N,) or (N, T)
    (process supervision); mask: (N, T) bool, True = the token counts; max_tokens: the generation
    budget, for aggregation "constant". Metrics are 0-d tensors (no host sync): the fraction of
    counted tokens whose ratio was clipped, the mean ratio, the mean k3 KL, and the token count.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    mask_f = mask.to(logp.dtype)
    log_ratio = logp - old_logp
    if config.ratio_level == "sequence":
        log_ratio = ((log_ratio * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - config.eps_low, 1 + config.eps_high)
    surrogate = torch.min(ratio * advantages, clipped * advantages)
    if is_weights is not None:
        surrogate = surrogate * is_weights
    per_token = -surrogate
    kl = None
    if config.beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + config.beta * kl
    per_token = per_token.expand_as(logp)
    loss = aggregate(per_token, mask, config.aggregation, max_tokens, num_sequences, num_tokens)

    with torch.no_grad():
        count = mask_f.sum().clamp(min=1.0)
        r = ratio.expand_as(logp)
        is_clipped = ((r < 1 - config.eps_low) & (advantages < 0)) | ((r > 1 + config.eps_high) & (advantages > 0))
        metrics = {
            "clip_fraction": (is_clipped.to(logp.dtype) * mask_f).sum() / count,
            "ratio_mean": (r * mask_f).sum() / count,
            "tokens": mask_f.sum(),
        }
        if kl is not None:
            metrics["kl"] = (kl * mask_f).sum() / count
    return loss, metrics
