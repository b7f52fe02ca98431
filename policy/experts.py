"""Routed-expert computation without a Python loop over experts.

Owns: `grouped_experts_forward`, which sorts the (token, expert) assignments by expert and runs
two grouped matmuls (`torch.nn.functional.grouped_mm`) over the contiguous per-expert blocks,
`dense_experts_forward`, which runs every expert on every token in two batched matmuls and
keeps the routed ones (`expert_impl: dense`: with a few tokens and most experts touched anyway,
one big matmul beats a grouped_mm with tiny groups; the rollout engine's single-token step has
its own fused version in policy/mla_decode.py), and `loop_experts_forward`, a slow
per-expert reference kept beside them for tests.

The weights are transformers' `DeepseekV2Experts` tensors, unchanged:
gate_up_proj (E, 2I, H) and down_proj (E, H, I). Under LoRA (policy/lora.py) the experts module
is wrapped by peft's `ParamWrapper`s; `expert_tensors` unwraps it and returns each adapted
tensor's low-rank factors, which every forward here adds as x A_e^T B_e^T (two thin grouped
matmuls) instead of building W_e + B_e A_e.

PyTorch's CPU autograd for grouped_mm fails on some shapes (empty expert groups), so the
backward is written out here with the same grouped_mm: dX = dY W, dW_e = dY_e^T X_e.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class ExpertLora(NamedTuple):
    """An expert stack's LoRA update: W_e + scaling * lhs_e @ rhs_e, lhs (E, out, r), rhs (E, r, in)."""

    lhs: torch.Tensor
    rhs: torch.Tensor
    scaling: float


def expert_factors(a: torch.Tensor, b: torch.Tensor, shape: torch.Size, experts: int):
    """(lhs (E, d1, r), rhs (E, r, d2)) with lhs @ rhs = B_e A_e in the tensor's (E, d1, d2) layout,
    from peft's A (r E, in) and B (out, r E), whose expert e is A[e r:(e+1) r] and B[:, e::E]."""
    a3 = a.reshape(experts, -1, a.shape[-1])  # (E, r, in)
    b3 = b.reshape(b.shape[0], -1, experts).permute(2, 0, 1)  # (E, out, r)
    if tuple(shape[1:]) == (b3.shape[1], a3.shape[2]):  # stored (E, out, in), as DeepSeek-V2's experts
        return b3, a3
    return a3.transpose(1, 2), b3.transpose(1, 2)  # stored (E, in, out)


def _active_lora(wrapper, shape: torch.Size) -> ExpertLora | None:
    """The factors of a peft ParamWrapper's active adapter, or None (adapters disabled or merged)."""
    if wrapper.disable_adapters:
        if wrapper.merged:
            wrapper.unmerge()
        return None
    names = [a for a in wrapper.active_adapters if a in wrapper.lora_A]
    if wrapper.merged or not names:
        return None
    if len(names) > 1:
        raise ValueError(f"{len(names)} active LoRA adapters on the routed experts; one at a time")
    a, b = wrapper.lora_A[names[0]].weight, wrapper.lora_B[names[0]].weight
    lhs, rhs = expert_factors(a, b, shape, wrapper.num_experts)
    return ExpertLora(lhs.contiguous(), rhs.contiguous(), float(wrapper.scaling[names[0]]))


def expert_tensors(experts) -> tuple[torch.nn.Module, dict[str, ExpertLora]]:
    """(the experts module, {tensor name: its active LoRA}) for a plain or a peft-wrapped module."""
    lora = {}
    while hasattr(experts, "parameter_name") and hasattr(experts, "base_layer"):  # peft ParamWrapper
        wrapper, experts = experts, experts.base_layer
        inner = experts
        while hasattr(inner, "parameter_name"):
            inner = inner.base_layer
        factors = _active_lora(wrapper, getattr(inner, wrapper.parameter_name).shape)
        if factors is not None:
            lora[wrapper.parameter_name] = factors
    return experts, lora


def expert_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, lora: ExpertLora | None) -> torch.Tensor:
    """grouped_linear(x, w) plus, with LoRA, scaling * (x rhs_e^T) lhs_e^T per expert group."""
    y = grouped_linear(x, w, offs)
    if lora is not None:
        y = y + lora.scaling * grouped_linear(grouped_linear(x, lora.rhs, offs), lora.lhs, offs)
    return y


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
    lora: dict[str, ExpertLora] | None = None,
) -> torch.Tensor:
    """sum_k weights[t,k] * Expert_{indices[t,k]}(x[t]) over the kept assignments.

    x: (N, H); indices, weights: (N, K); keep: (N, K) bool or None (keep all); lora: the tensors'
    LoRA updates by name (`expert_tensors`). Returns (N, H) in x's dtype.
    """
    lora = lora or {}
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
    h = expert_linear(x.index_select(0, token), gate_up_proj, offs, lora.get("gate_up_proj"))
    gate, up = h.chunk(2, dim=-1)
    y = expert_linear(act_fn(gate) * up, down_proj, offs, lora.get("down_proj"))
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
    lora: dict[str, ExpertLora] | None = None,
) -> torch.Tensor:
    """Reference: one Python iteration per expert (what transformers' eager path does)."""
    lora = lora or {}

    def linear(v, w, e, name):
        y = F.linear(v, w[e])
        if name in lora:
            y = y + lora[name].scaling * F.linear(F.linear(v, lora[name].rhs[e]), lora[name].lhs[e])
        return y

    out = torch.zeros_like(x)
    weights = weights if keep is None else weights * keep
    for e in range(gate_up_proj.shape[0]):
        rows, slots = torch.where((indices == e) & (keep if keep is not None else True))
        if rows.numel() == 0:
            continue
        gate, up = linear(x[rows], gate_up_proj, e, "gate_up_proj").chunk(2, dim=-1)
        y = linear(act_fn(gate) * up, down_proj, e, "down_proj") * weights[rows, slots].unsqueeze(1)
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
    lora: dict[str, ExpertLora] | None = None,
) -> torch.Tensor:
    """Same result as grouped_experts_forward; every expert computed for every token (small N only)."""
    lora = lora or {}
    n_tokens, num_experts = x.shape[0], gate_up_proj.shape[0]
    mix = torch.zeros(n_tokens, num_experts, dtype=torch.float32, device=x.device)
    mix.scatter_add_(1, indices, (weights if keep is None else weights * keep).float())
    h = (x @ gate_up_proj.reshape(-1, x.shape[1]).t()).view(n_tokens, num_experts, -1)  # (N, E, 2I), one matmul
    if "gate_up_proj" in lora:
        f = lora["gate_up_proj"]
        low = (x @ f.rhs.reshape(-1, x.shape[1]).t()).view(n_tokens, num_experts, -1)  # (N, E, r)
        h = h + f.scaling * torch.bmm(low.transpose(0, 1), f.lhs.transpose(1, 2)).transpose(0, 1)
    gate, up = h.chunk(2, dim=-1)
    a = (act_fn(gate) * up).transpose(0, 1)  # (E, N, I)
    y = torch.bmm(a, down_proj.transpose(1, 2))  # (E, N, H)
    if "down_proj" in lora:
        f = lora["down_proj"]
        y = y + f.scaling * torch.bmm(torch.bmm(a, f.rhs.transpose(1, 2)), f.lhs.transpose(1, 2))
    return torch.bmm(y.permute(1, 2, 0), mix.to(y.dtype).unsqueeze(2)).squeeze(2).to(x.dtype)
