"""log p(target) and the entropy at every position from (N, C, V) logits, in two passes over the
vocabulary instead of autograd's six.

`log_softmax` then `gather` keeps the whole (N, C, V) log-softmax for backward, and its backward
writes a (N, C, V) zero tensor for gather's gradient and another for log_softmax's; the entropy
takes two more full tensors. Each fresh tensor of that size costs more in page faults than in
arithmetic on CPU (a 400 MB log-softmax took 2.5 s here, benchmarks/RESULTS.md). Here the forward
keeps only the logsumexp per position and works through the positions in chunks of 16 MB (the
entropy, never differentiated, reuses the chunk's temporary), and the backward writes the
gradient once, chunk by chunk: softmax * -g with g added at the target,
d/dz [z_t - logsumexp(z)] = onehot_t - softmax(z). The
logits stay as the model gave them (bf16 is read as fp32); the temperature divides inside.
Tests hold values and gradients equal to the log_softmax path (tests/test_logprobs.py).
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 22  # positions per pass over the vocabulary: 16 MB of fp32 temporaries at a time


def _chunks(logits: torch.Tensor) -> list[slice]:
    """Row slices of the flattened (N * C, V) logits, each about CHUNK_ELEMENTS elements."""
    rows, vocab = logits.shape[0], logits.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class _TokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool):
        shape = targets.shape
        flat, tgt = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        logp, ent = torch.empty_like(lse), torch.empty_like(lse) if entropy else None
        for rows in _chunks(flat):  # small temporaries, reused by the allocator, instead of (N, C, V) ones
            z = _scaled(flat[rows], temperature)
            lse[rows] = torch.logsumexp(z, dim=-1)
            logp[rows] = z.gather(-1, tgt[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
            if entropy:  # H = logsumexp(z) - sum_v softmax(z)_v z_v
                p = (z - lse[rows].unsqueeze(-1)).exp_()
                ent[rows] = lse[rows] - p.mul_(z).sum(-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        if ent is None:
            return logp.view(shape), None
        ent = ent.view(shape)
        ctx.mark_non_differentiable(ent)
        return logp.view(shape), ent

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor, _grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        flat, tgt, g = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), grad_logp.reshape(-1, 1)
        grad = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
        for rows in _chunks(flat):  # softmax * -g, then g at the target: written once, chunk by chunk
            out = grad[rows]
            torch.sub(_scaled(flat[rows], t), lse[rows].unsqueeze(-1), out=out)
            out.exp_().mul_(-g[rows])
            out.scatter_add_(-1, tgt[rows].unsqueeze(-1), g[rows])
        if t > 0 and t != 1.0:
            grad.div_(t)
        return grad.view(logits.shape).to(logits.dtype), None, None, None


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.float()
    return z / temperature if temperature > 0 and temperature != 1.0 else z


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(logits / T)[target] (N, C) float32, the entropy (N, C) or None); logits (N, C, V),
    targets (N, C) long. Temperature 0 (greedy) or 1 leaves the logits unscaled."""
    return _TokenLogprob.apply(logits, targets, temperature, entropy)
