"""DeepSeek-V2's three auxiliary balance losses (V2 §2.2.3, eqs. 23-31) as pure tensor functions.

All three are computed per sequence and averaged over the sequences of the batch. A sequence
is whatever `seq_index` says: a padded row, or one document of a packed row.

    f_i   = N_r / (K_r T) * sum_t 1(token t selects expert i)        P_i   = (1/T) sum_t s_{i,t}
    L_exp = a1 * sum_i f_i P_i
    f'_d  = mean_{j in E_d} f_j          P'_d = sum_{j in E_d} P_j     L_dev  = a2 * sum_d f'_d P'_d
    f''_d = D / (M T) * sum_t 1(t sent to device d)                   L_comm = a3 * sum_d f''_d P'_d

The counts f carry no gradient; gradients flow through P only. Under perfect balance every f is
1, so each loss equals its coefficient.
"""

from __future__ import annotations

import torch


def _per_sequence_sums(values: torch.Tensor, seq_index: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Sum rows of values (N, X) into (num_seqs, X) by seq_index (N,); -1 rows are ignored."""
    keep = seq_index >= 0
    out = values.new_zeros(num_seqs, values.shape[1])
    return out.index_add(0, seq_index[keep], values[keep])


def routing_fractions(
    scores: torch.Tensor, indices: torch.Tensor, seq_index: torch.Tensor, num_seqs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f (S, E) selection fractions, P (S, E) mean affinities and T (S,) token counts per sequence.

    scores: (N, E) softmax affinities; indices: (N, K) chosen experts; seq_index: (N,) the
    sequence of each token, -1 for tokens that do not count (padding).
    """
    num_experts, top_k = scores.shape[1], indices.shape[1]
    selected = torch.zeros_like(scores).scatter_(1, indices, 1.0)
    counts = _per_sequence_sums(selected.detach(), seq_index, num_seqs)
    prob_sums = _per_sequence_sums(scores, seq_index, num_seqs)
    tokens = counts.sum(1) / top_k
    denom = tokens.clamp(min=1.0).unsqueeze(1)
    f = counts * num_experts / (top_k * denom)
    p = prob_sums / denom
    return f, p, tokens


def _mean_over_present(per_seq: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    present = tokens > 0
    if not bool(present.any()):
        return per_seq.sum() * 0.0
    return per_seq[present].mean()


def expert_balance_loss(f: torch.Tensor, p: torch.Tensor, tokens: torch.Tensor, alpha: float) -> torch.Tensor:
    """L_ExpBal = alpha * sum_i f_i P_i, per sequence, averaged over sequences."""
    return alpha * _mean_over_present((f * p).sum(-1), tokens)


def device_balance_loss(
    f: torch.Tensor, p: torch.Tensor, tokens: torch.Tensor, num_devices: int, alpha: float
) -> torch.Tensor:
    """L_DevBal = alpha * sum_d f'_d P'_d with experts split into num_devices contiguous groups."""
    s = f.shape[0]
    f_dev = f.view(s, num_devices, -1).mean(-1)
    p_dev = p.view(s, num_devices, -1).sum(-1)
    return alpha * _mean_over_present((f_dev * p_dev).sum(-1), tokens)


def communication_balance_loss(
    indices: torch.Tensor,
    p: torch.Tensor,
    tokens: torch.Tensor,
    seq_index: torch.Tensor,
    num_devices: int,
    topk_group: int,
    alpha: float,
) -> torch.Tensor:
    """L_CommBal = alpha * sum_d f''_d P''_d, f''_d = D/(M T) * #tokens sent to device d."""
    s, num_experts = p.shape
    device_of = indices // (num_experts // num_devices)  # (N, K)
    sent = torch.zeros(indices.shape[0], num_devices, device=indices.device, dtype=p.dtype)
    sent.scatter_(1, device_of, 1.0)  # a token is sent to a device once, however many experts
    sent_counts = _per_sequence_sums(sent, seq_index, s)
    f_comm = sent_counts * num_devices / (topk_group * tokens.clamp(min=1.0).unsqueeze(1))
    p_dev = p.view(s, num_devices, -1).sum(-1)
    return alpha * _mean_over_present((f_comm * p_dev).sum(-1), tokens)
