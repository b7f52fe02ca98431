"""Balance losses against hand-computed values (reference §2.3)."""

import pytest
import torch

from policy.balance import (
    communication_balance_loss,
    device_balance_loss,
    expert_balance_loss,
    routing_fractions,
)

A1, A2, A3 = 0.003, 0.05, 0.02


def _losses(scores, indices, seq_index, num_seqs, devices, m):
    f, p, t = routing_fractions(scores, indices, seq_index, num_seqs)
    return (
        expert_balance_loss(f, p, t, A1).item(),
        device_balance_loss(f, p, t, devices, A2).item(),
        communication_balance_loss(indices, p, t, seq_index, devices, m, A3).item(),
    )


def test_perfect_balance_gives_each_alpha():
    # 4 experts on 2 devices ({0,1}, {2,3}), K=2, M=1, one sequence of 4 tokens.
    # f_i = 4/(2*4) * 2 = 1 for every expert; P_i = 0.25; f'_d = 1, P'_d = 0.5;
    # f''_d = 2/(1*4) * 2 = 1. So each loss = alpha * 1.
    scores = torch.full((4, 4), 0.25)
    indices = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])
    seq_index = torch.zeros(4, dtype=torch.long)
    exp, dev, comm = _losses(scores, indices, seq_index, 1, devices=2, m=1)
    assert exp == pytest.approx(A1)
    assert dev == pytest.approx(A2)
    assert comm == pytest.approx(A3)


def test_hand_made_routing():
    # E=4, K=1, D=2 ({0,1} | {2,3}), M=1.
    # Sequence 0 (T=2): s = [.4,.3,.2,.1] and [.5,.1,.3,.1], both tokens pick expert 0.
    #   f = 4/(1*2) * [2,0,0,0] = [4,0,0,0]; P = [.45,.2,.25,.1]; sum f*P = 1.8
    #   f' = [2, 0], P' = [.65, .35]: sum = 1.3;  f'' = 2/(1*2) * [2, 0] = [2, 0]: sum = 1.3
    # Sequence 1 (T=1): s uniform .25, picks expert 2.
    #   f = [0,0,4,0], P = .25 each: 1.0;  f' = [0,2], P' = [.5,.5]: 1.0;  f'' = [0,2]: 1.0
    # A padding token (seq_index -1) counts nowhere. Means: 1.4, 1.15, 1.15.
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.25] * 4, [0.9, 0.05, 0.03, 0.02]])
    indices = torch.tensor([[0], [0], [2], [0]])
    seq_index = torch.tensor([0, 0, 1, -1])
    exp, dev, comm = _losses(scores, indices, seq_index, 2, devices=2, m=1)
    assert exp == pytest.approx(1.4 * A1)
    assert dev == pytest.approx(1.15 * A2)
    assert comm == pytest.approx(1.15 * A3)


def test_gradient_flows_through_p_only():
    # dL_exp/ds_{i,t} = alpha * f_i / T: with f = [4,0,0,0], T = 2 -> [2a, 0, 0, 0] per token.
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1]], requires_grad=True)
    indices = torch.tensor([[0], [0]])
    f, p, t = routing_fractions(scores, indices, torch.zeros(2, dtype=torch.long), 1)
    expert_balance_loss(f, p, t, A1).backward()
    expected = torch.tensor([[2 * A1, 0, 0, 0]] * 2)
    torch.testing.assert_close(scores.grad, expected)


def test_empty_sequence_is_left_out_of_the_mean():
    scores = torch.full((4, 4), 0.25)
    indices = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])
    seq_index = torch.zeros(4, dtype=torch.long)
    f, p, t = routing_fractions(scores, indices, seq_index, 3)  # sequences 1 and 2 have no tokens
    assert expert_balance_loss(f, p, t, A1).item() == pytest.approx(A1)
