"""Routing drift (evals/routing_drift.py): the per-layer agreement by hand, a model against itself,
and against a copy whose last MoE router alone was changed."""

import copy

import pytest
import torch

from evals.routing_drift import agreement_per_layer, routed_experts, routing_agreement
from policy.load import load_policy


def test_agreement_per_layer_by_hand():
    a = [torch.tensor([[[0, 1], [2, 3], [1, 2]]])]  # (N=1, T=3, k=2), sorted sets
    b = [torch.tensor([[[0, 1], [2, 4], [1, 2]]])]
    assert agreement_per_layer(a, b, torch.tensor([[True, True, False]])) == [0.5]
    assert agreement_per_layer(a, b, torch.tensor([[True, True, True]])) == [pytest.approx(2 / 3)]


def test_a_model_agrees_with_itself_and_drift_shows_in_the_changed_layer_only():
    model, _ = load_policy("tiny")
    rows = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(rows)
    predicting = torch.zeros(rows.shape, dtype=torch.bool)
    predicting[:, 5:] = True
    experts = routed_experts(model, rows, attention)
    assert len(experts) == 3 and experts[0].shape == (3, 12, 4)
    assert all((e[..., 1:] > e[..., :-1]).all() for e in experts)  # sorted sets of distinct experts
    assert routing_agreement(model, model, rows, attention, predicting) == [1.0, 1.0, 1.0]
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[-1].mlp.gate.weight.mul_(-1.0)  # the last router ranks experts the other way
    drift = routing_agreement(model, other, rows, attention, predicting)
    assert drift[:2] == [1.0, 1.0] and drift[2] < 0.2
    assert all(m.routing_sink is None for m in model.moe_layers())  # nothing left hanging on the layers
