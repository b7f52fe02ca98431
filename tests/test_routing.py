"""Device-limited routing, token dropping and router statistics."""

import math

import torch

from policy.routing import capacity_keep_mask, router_stats, select_experts


def test_greedy_is_plain_topk():
    scores = torch.rand(50, 16).softmax(-1)
    weights, indices = select_experts(scores, 4)
    ref = scores.topk(4, dim=-1)
    assert torch.equal(indices.sort(-1).values, ref.indices.sort(-1).values)
    torch.testing.assert_close(weights.sort(-1).values, ref.values.sort(-1).values)


def test_group_limited_never_leaves_the_top_groups():
    torch.manual_seed(0)
    n_group, topk_group, per_group = 8, 3, 20  # V2: 160 experts on 8 devices, M = 3
    scores = torch.randn(2000, n_group * per_group).softmax(-1)
    weights, indices = select_experts(scores, 6, n_group, topk_group)
    group_best = scores.view(-1, n_group, per_group).amax(-1)
    top_groups = group_best.topk(topk_group, dim=-1).indices
    chosen_groups = indices // per_group
    allowed = (chosen_groups.unsqueeze(-1) == top_groups.unsqueeze(1)).any(-1)
    assert bool(allowed.all())
    assert all(len(set(row)) <= topk_group for row in chosen_groups.tolist())
    torch.testing.assert_close(weights, scores.gather(1, indices))
    # Within the allowed groups the choice is greedy: no allowed expert beats a chosen one.
    masked = scores.clone()
    keep = torch.zeros(2000, n_group, dtype=torch.bool).scatter_(1, top_groups, True)
    masked[~keep.repeat_interleave(per_group, 1)] = -1
    torch.testing.assert_close(weights.sort(-1).values, masked.topk(6, dim=-1).values.sort(-1).values)


def test_group_limited_with_all_groups_equals_greedy():
    scores = torch.rand(30, 16).softmax(-1)
    _, a = select_experts(scores, 3, n_group=4, topk_group=4)
    _, b = select_experts(scores, 3)
    assert torch.equal(a.sort(-1).values, b.sort(-1).values)


def test_capacity_drops_lowest_scores_beyond_budget():
    # 4 experts on 2 devices, K=1, 6 tokens all routed to device 0 (experts 0/1).
    # A = 6 assignments, C = ceil(6/2) = 3: device 0 keeps its 3 highest-score assignments.
    indices = torch.tensor([[0], [1], [0], [1], [0], [1]])
    weights = torch.tensor([[0.9], [0.1], [0.5], [0.7], [0.2], [0.3]])
    none = torch.zeros(6, dtype=torch.bool)
    keep = capacity_keep_mask(indices, weights, 4, 2, protected=none, valid=~none)
    assert keep.squeeze(1).tolist() == [True, False, True, True, False, False]


def test_protected_tokens_are_never_dropped_and_use_budget_first():
    indices = torch.tensor([[0], [1], [0], [1], [0], [1]])
    weights = torch.tensor([[0.9], [0.1], [0.5], [0.7], [0.2], [0.3]])
    protected = torch.tensor([False, True, False, False, True, False])  # the two lowest scores
    valid = torch.ones(6, dtype=torch.bool)
    keep = capacity_keep_mask(indices, weights, 4, 2, protected=protected, valid=valid)
    # C = 3: both protected kept, 1 slot left for the best unprotected (0.9).
    assert keep.squeeze(1).tolist() == [True, True, False, False, True, False]


def test_capacity_holds_per_device_on_random_routing():
    torch.manual_seed(1)
    n, k, e, d = 400, 4, 16, 4
    scores = torch.randn(n, e).mul(2).softmax(-1)
    weights, indices = select_experts(scores, k, n_group=d, topk_group=2)
    protected = torch.rand(n) < 0.1
    valid = torch.rand(n) < 0.95
    keep = capacity_keep_mask(indices, weights, e, d, protected, valid)
    capacity = math.ceil(int(valid.sum()) * k / d)
    device = indices // (e // d)
    prot = protected.unsqueeze(1).expand_as(keep) & valid.unsqueeze(1)
    for dev in range(d):
        on_dev = device == dev
        kept = (keep & on_dev & valid.unsqueeze(1)).sum().item()
        kept_prot = (prot & on_dev).sum().item()
        assert kept <= max(capacity, kept_prot)
    assert bool(keep[prot].all())  # protected never dropped
    assert not bool(keep[~valid].any())  # padding never computed
    # Every dropped assignment scores no higher than the lowest kept unprotected one on its device.
    for dev in range(d):
        cand = (device == dev) & valid.unsqueeze(1) & ~prot
        kept_scores, dropped_scores = weights[cand & keep], weights[cand & ~keep]
        if kept_scores.numel() and dropped_scores.numel():
            assert dropped_scores.max() <= kept_scores.min()


def test_router_stats():
    # 4 experts; assignments of valid tokens: 0,0,0,1 (token 3 is padding) -> load [.75,.25,0,0]
    indices = torch.tensor([[0], [0], [0], [1], [2]])
    keep = torch.tensor([[True], [False], [True], [True], [True]])
    valid = torch.tensor([True, True, True, True, False])
    stats = router_stats(indices, keep, valid, 4)
    torch.testing.assert_close(stats.expert_load, torch.tensor([0.75, 0.25, 0.0, 0.0]))
    assert stats.imbalance == 3.0  # max .75 / mean .25
    assert stats.drop_rate == 0.25  # 1 of 4 valid assignments dropped
