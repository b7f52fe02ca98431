"""Sampling the next token: temperature / top-k / top-p, greedy at temperature 0, seeded, with the
drawn token's log-probability (what the rollout engine stores for the learner)."""

from __future__ import annotations

import torch


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): greedy if temperature == 0."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return _inverse_cdf(logits.softmax(-1), generator)


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row with one uniform each (torch.multinomial draws one exponential per
    vocabulary entry: 18 ms per step for 16 rows x 49K tokens on CPU; this is under 1 ms)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def sample_with_logprob(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_next` plus each drawn token's log-probability under logits / temperature (before
    top-k / top-p; logits themselves at temperature 0), from one log-softmax when no filter is set."""
    scaled = logits.float()
    if temperature > 0 and temperature != 1.0:
        scaled = scaled / temperature
    logp = scaled.log_softmax(-1)
    if temperature > 0 and top_k <= 0 and top_p >= 1.0:
        token = _inverse_cdf(logp.exp(), generator)
    else:
        token = sample_next(logits, temperature, top_k, top_p, generator)
    return token, logp.gather(1, token.unsqueeze(1)).squeeze(1)
