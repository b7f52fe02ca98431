"""Routed-expert computation without a Python loop over experts.

Owns: `grouped_experts_forward`, which sorts the (token, expert) assignments by expert and runs
two grouped matmuls (`torch.nn.functional.grouped_mm`) over the contiguous per-expert blocks,
`dense_experts_forward`, which runs every expert on every token in two batched matmuls and
keeps the routed ones (`expert_impl: dense`: with a few tokens and most experts touched anyway,
one big matmul beats a grouped_mm with tiny groups; the rollout engine's single-token step has
its own fused version in policy/mla_decode.py), and `loop_experts_forward`, a slow
per-expert reference kept beside them for tests.

The weights are transformers' `DeepseekV2Experts` tensors, unchanged:
gate_up_proj (E, 2I, H) and down_proj (E, H, I).

PyTorch's CPU autograd for grouped_mm fails on some shapes (empty expert groups), so the
backward is written out here with the same grouped_mm: dX = dY W, dW_e = dY_e^T X_e.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class _GroupedLinear(torch.autograd.Function):
    """y[rows of e] = x[rows of e] @ w[e]^T for contiguous row blocks ending at offs.

    w keeps nn.Linear's (out, in) layout per expert, and so does its gradient: returning the
    gradient of a transposed view would make autograd copy the whole expert tensor back.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w, offs)
        return F.grouped_mm(x, w.transpose(1, 2), offs=offs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, w, offs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = F.grouped_mm(grad_out, w, offs=offs) if ctx.needs_input_grad[0] else None
        grad_w = F.grouped_mm(grad_out.t(), x, offs=offs) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def grouped_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x (M, in) rows sorted by group, w (G, out, in), offs (G,) int32 cumulative row counts."""
    return _GroupedLinear.apply(x, w, offs)


def grouped_experts_forward(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    keep: torch.Tensor | None,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """sum_k weights[t,k] * Expert_{indices[t,k]}(x[t]) over the kept assignments.

    x: (N, H); indices, weights: (N, K); keep: (N, K) bool or None (keep all).
    Returns (N, H) in x's dtype.
    """
    n_tokens, top_k = indices.shape
    num_experts = gate_up_proj.shape[0]
    expert = indices.reshape(-1)
    token = torch.arange(n_tokens, device=x.device).repeat_interleave(top_k)
    gate_weight = weights.reshape(-1)
    if keep is not None:
        kept = keep.reshape(-1)
        expert, token, gate_weight = expert[kept], token[kept], gate_weight[kept]

    order = torch.argsort(expert, stable=True)
    token = token[order]
    offs = torch.cumsum(torch.bincount(expert, minlength=num_experts), 0).to(torch.int32)

    # index_select, not x[token]: its backward is index_add (deterministic, 13x faster here than
    # the accumulating index_put of advanced indexing, whose result varies with the CPU threads)
    h = grouped_linear(x.index_select(0, token), gate_up_proj, offs)
    gate, up = h.chunk(2, dim=-1)
    y = grouped_linear(act_fn(gate) * up, down_proj, offs)
    y = y * gate_weight[order].unsqueeze(1).to(y.dtype)
    return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))


def loop_experts_forward(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    keep: torch.Tensor | None,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Reference: one Python iteration per expert (what transformers' eager path does)."""
    out = torch.zeros_like(x)
    weights = weights if keep is None else weights * keep
    for e in range(gate_up_proj.shape[0]):
        rows, slots = torch.where((indices == e) & (keep if keep is not None else True))
        if rows.numel() == 0:
            continue
        gate, up = F.linear(x[rows], gate_up_proj[e]).chunk(2, dim=-1)
        y = F.linear(act_fn(gate) * up, down_proj[e]) * weights[rows, slots].unsqueeze(1)
        out.index_add_(0, rows, y.to(x.dtype))
    return out


def dense_experts_forward(
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    keep: torch.Tensor | None,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Same result as grouped_experts_forward; every expert computed for every token (small N only)."""
    n_tokens, num_experts = x.shape[0], gate_up_proj.shape[0]
    mix = torch.zeros(n_tokens, num_experts, dtype=torch.float32, device=x.device)
    mix.scatter_add_(1, indices, (weights if keep is None else weights * keep).float())
    h = (x @ gate_up_proj.reshape(-1, x.shape[1]).t()).view(n_tokens, num_experts, -1)  # (N, E, 2I), one matmul
    gate, up = h.chunk(2, dim=-1)
    y = torch.bmm((act_fn(gate) * up).transpose(0, 1), down_proj.transpose(1, 2))  # (E, N, H)
    return torch.bmm(y.permute(1, 2, 0), mix.to(y.dtype).unsqueeze(2)).squeeze(2).to(x.dtype)
