"""DeepSeekMoE routing as pure tensor functions: top-K selection, token dropping, router stats.

Owns: greedy and device-limited (group-limited greedy) top-K selection over the routed experts,
device-level token dropping at a capacity factor, and the statistics we log per MoE layer.

Departures from the paper (V2 §2.2.2, §2.2.4) and the reason for each:
- Token dropping is defined per layer over the *local* batch: the device budget is
  C = ceil(sum_d |A_d| / D) assignments, the average load per device (capacity factor 1.0).
  The paper drops at device level during distributed training; with no expert parallelism we
  apply the same rule to the virtual devices (the expert groups), which is the same arithmetic.
- Protected assignments (tokens of protected sequences) are always kept and use up budget
  first; the rest of a device's budget goes to the highest-affinity unprotected assignments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def select_experts(
    scores: torch.Tensor, top_k: int, n_group: int = 1, topk_group: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K routed experts per token.

    scores: (N, E) softmax affinities s_{i,t}, fp32.
    n_group, topk_group: with n_group > 1 and topk_group < n_group this is the paper's
    device-limited routing: experts are split into n_group contiguous groups (devices), each
    group is scored by its best expert, only the top `topk_group` groups (M) may be chosen.
    Returns (weights (N, K), indices (N, K)): weights are the original softmax scores of the
    chosen experts (no renormalisation; the caller applies routed_scaling_factor).
    """
    num_experts = scores.shape[-1]
    if n_group > 1 and topk_group < n_group:
        if num_experts % n_group:
            raise ValueError(f"n_routed_experts={num_experts} is not divisible by n_group={n_group}")
        grouped = scores.view(-1, n_group, num_experts // n_group)
        group_idx = grouped.amax(dim=-1).topk(topk_group, dim=-1).indices  # (N, M)
        group_keep = torch.zeros(scores.shape[0], n_group, dtype=torch.bool, device=scores.device)
        group_keep.scatter_(1, group_idx, True)
        expert_keep = group_keep.repeat_interleave(num_experts // n_group, dim=1)
        # -1 is below every softmax score, so a masked expert is never picked.
        # (top_k never exceeds the kept experts, so every value picked is an unmasked score)
        return scores.masked_fill(~expert_keep, -1.0).topk(top_k, dim=-1)
    return scores.topk(top_k, dim=-1)


def capacity_keep_mask(
    indices: torch.Tensor,
    weights: torch.Tensor,
    num_experts: int,
    num_devices: int,
    protected: torch.Tensor,
    valid: torch.Tensor,
    capacity_factor: float = 1.0,
) -> torch.Tensor:
    """Which (token, expert) assignments survive device-level token dropping.

    indices, weights: (N, K) chosen experts and their affinities.
    protected: (N,) bool, True = token of a protected sequence (never dropped).
    valid: (N,) bool, True = a real token (padding is never computed and takes no budget).
    Returns keep (N, K) bool, True = the assignment is computed.

    Budget per device C = ceil(capacity_factor * A / D), A = assignments of valid tokens.
    Protected assignments are always kept and use budget first; the remaining budget of each
    device goes to its unprotected assignments in descending affinity.
    """
    n_tokens, top_k = indices.shape
    experts_per_device = num_experts // num_devices
    device = (indices // experts_per_device).reshape(-1)  # (N*K,)
    score = weights.reshape(-1).float()
    is_valid = valid.repeat_interleave(top_k)
    is_protected = protected.repeat_interleave(top_k) & is_valid
    total = int(is_valid.sum())
    capacity = int(torch.ceil(torch.tensor(capacity_factor * total / num_devices)).item())

    protected_load = torch.bincount(device[is_protected], minlength=num_devices)
    budget = (capacity - protected_load).clamp(min=0)  # (D,)

    candidate = is_valid & ~is_protected
    cand_idx = candidate.nonzero().squeeze(1)
    cand_dev = device[cand_idx]
    # Order candidates by device, then by descending score: key = device + (1 - score) / 2.
    order = torch.argsort(cand_dev.double() + (1.0 - score[cand_idx].double()) * 0.5, stable=True)
    sorted_dev = cand_dev[order]
    counts = torch.bincount(sorted_dev, minlength=num_devices)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(sorted_dev.numel(), device=indices.device) - starts[sorted_dev]
    keep_sorted = rank < budget[sorted_dev]

    keep = is_protected.clone()
    keep[cand_idx[order]] = keep_sorted
    return keep.view(n_tokens, top_k)


@dataclass
class RouterStats:
    """What one MoE layer reports for logging (all detached).

    expert_load: (E,) fraction of the routed assignments sent to each expert (sums to 1).
    imbalance: max(load) / mean(load); 1.0 is perfect balance.
    drop_rate: fraction of the routed assignments dropped by the capacity rule.
    """

    expert_load: torch.Tensor
    imbalance: float
    drop_rate: float


def router_stats(indices: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor, num_experts: int) -> RouterStats:
    """Per-expert load, load imbalance and drop rate over the valid tokens' assignments."""
    chosen = indices[valid].reshape(-1)
    counts = torch.bincount(chosen, minlength=num_experts).double()
    total = counts.sum().clamp(min=1.0)
    load = counts / total
    mean = load.mean().clamp(min=1e-12)
    dropped = (~keep[valid]).sum().item()
    return RouterStats(
        expert_load=load.float(),
        imbalance=float(load.max() / mean) if chosen.numel() else 0.0,
        drop_rate=float(dropped / total.item()) if chosen.numel() else 0.0,
    )
