"""GRPO's pure functions against hand-computed values, and the loss against TRL's GRPOTrainer
(numbers saved from TRL by tests/fixtures/make_trl_grpo_loss.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

from grpo.advantages import group_advantages
from grpo.loss import (
    LossConfig,
    aggregate,
    grpo_loss,
    icepop_weights,
    k3_kl,
    masked_is_weights,
    truncated_is_weights,
)
from grpo.sampling import informative_groups, overlong_mask


def test_group_advantages_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, sample std sqrt(4*0.25/3) = 0.57735 -> +-0.5/0.57745
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = group_advantages(rewards)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(adv[0], torch.tensor([a, -a, -a, a]), atol=1e-6)
    assert torch.equal(adv[1], torch.zeros(4))  # identical rewards: zero advantage
    # Dr. GRPO: centred only
    assert torch.allclose(group_advantages(rewards, "none")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # batch scale: std over all 8 rewards [1,0,0,1,2,2,2,2]: mean 1.25, var = (2*.0625+2*1.5625+4*.5625)/7
    std = math.sqrt((2 * 0.0625 + 2 * 1.5625 + 4 * 0.5625) / 7)
    assert torch.allclose(group_advantages(rewards, "batch")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, "median")


def test_k3_kl_by_hand_and_gradient():
    logp = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    ref = torch.tensor([math.log(0.25), math.log(0.25)])
    kl = k3_kl(logp, ref)
    # x = log(0.25/0.5) = -log 2: 0.5 + log 2 - 1 = 0.19315; x = 0 -> 0
    assert torch.allclose(kl, torch.tensor([0.5 + math.log(2) - 1, 0.0]), atol=1e-6)
    kl.sum().backward()
    # dD/dlogp = 1 - pi_ref/pi = 1 - 0.5 ; 0
    assert torch.allclose(logp.grad, torch.tensor([0.5, 0.0]), atol=1e-6)


def test_clipped_surrogate_by_hand():
    # log ratio 0.5 everywhere: ratio e^0.5 = 1.6487, clipped to 1.2 (eps_high 0.2) for A > 0;
    # for A < 0 min(1.6487 * -1, 1.2 * -1) = -1.6487 (not clipped)
    logp = torch.full((2, 2), 0.5)
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True], [True, False]])
    loss, metrics = grpo_loss(logp, old, adv, mask, LossConfig(beta=0.0))
    # seq 0: -1.2 per token -> mean -1.2; seq 1: +1.6487 -> mean over 1 token; seq_mean = (-1.2 + 1.6487)/2
    assert loss.item() == pytest.approx((-1.2 + math.exp(0.5)) / 2, abs=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 3)  # both tokens of seq 0 clipped
    # clip-higher: eps_high 0.28 -> seq 0 uses 1.28
    loss, _ = grpo_loss(logp, old, adv, mask, LossConfig(beta=0.0, eps_high=0.28))
    assert loss.item() == pytest.approx((-1.28 + math.exp(0.5)) / 2, abs=1e-6)


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate(per_token, mask, "seq_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx(10.0 / 4)
    assert aggregate(per_token, mask, "constant", max_tokens=5).item() == pytest.approx(10.0 / (2 * 5))
    # micro-batches with the whole batch's counts add up to the whole batch's loss
    halves = [aggregate(per_token[i:i + 1], mask[i:i + 1], "token_mean", num_tokens=4) for i in range(2)]
    assert sum(h.item() for h in halves) == pytest.approx(2.5)
    halves = [aggregate(per_token[i:i + 1], mask[i:i + 1], "seq_mean", num_sequences=2) for i in range(2)]
    assert sum(h.item() for h in halves) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(per_token, mask, "constant")


def test_sequence_level_ratio_by_hand():
    # log ratios [0.2, 0.4] (mean 0.3) -> one ratio e^0.3 = 1.3499 for the sequence, clipped to 1.2 for A=1
    logp = torch.tensor([[0.2, 0.4]])
    loss, _ = grpo_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool),
                        LossConfig(beta=0.0, ratio_level="sequence"))
    assert loss.item() == pytest.approx(-1.2)
    loss, _ = grpo_loss(logp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2, dtype=torch.bool),
                        LossConfig(beta=0.0, ratio_level="sequence"))
    assert loss.item() == pytest.approx(math.exp(0.3), abs=1e-6)


def test_truncated_is_weights_and_masks():
    w = truncated_is_weights(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), cap=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 2.0]))  # e^1 = 2.718 capped at 2
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = grpo_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool),
                        LossConfig(beta=0.0), is_weights=torch.tensor([[0.5, 0.5]]))
    assert loss.item() == pytest.approx(-0.5)
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    assert informative_groups(rewards).tolist() == [False, True, False]
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert overlong_mask(mask, torch.tensor([False, True])).tolist() == [[True] * 3, [False] * 3]


def test_masked_is_and_icepop_weights_by_hand():
    ln = math.log
    learner = torch.tensor([[ln(0.3), ln(0.9), ln(0.5)], [ln(0.8), ln(0.2), ln(0.6)]])
    rollout = torch.tensor([[ln(0.6), ln(0.3), ln(0.5)], [ln(0.4), ln(0.4), ln(0.6)]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # per-token ratios: [0.5, 3.0, 1.0] and [2.0, 0.5, (1.0, masked)]
    token = masked_is_weights(learner, rollout, mask, cap=2.5)
    assert torch.allclose(token, torch.tensor([[0.5, 0.0, 1.0], [2.0, 0.5, 0.0]]))  # 3.0 > 2.5: out, not capped
    # sequence ratios: 0.5 * 3 * 1 = 1.5 (kept, every token gets 1.5) and 2 * 0.5 = 1.0
    seq = masked_is_weights(learner, rollout, mask, cap=1.2, level="sequence")
    assert torch.allclose(seq, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))  # 1.5 > 1.2: the sequence is out
    assert torch.allclose(masked_is_weights(learner, rollout, mask, cap=2.0, level="sequence"),
                          torch.tensor([[1.5, 1.5, 1.5], [1.0, 1.0, 0.0]]))
    pop = icepop_weights(learner, rollout, low=0.6, high=2.5)  # 0.5 and 3.0 are outside [0.6, 2.5]
    assert torch.allclose(pop, torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0]]))
    assert not pop.requires_grad and not token.requires_grad


TRL = json.loads((Path(__file__).parent / "fixtures" / "trl_grpo_loss.json").read_text())


@pytest.mark.parametrize("aggregation,trl_type", [("seq_mean", "grpo"), ("token_mean", "bnpo"),
                                                  ("constant", "dr_grpo")])
def test_loss_matches_trl(aggregation, trl_type):
    """Against TRL's GRPOTrainer._compute_loss on the same tensors, saved once by
    tests/fixtures/make_trl_grpo_loss.py (which builds them with the same seeded generator)."""
    from tests.fixtures.make_trl_grpo_loss import inputs

    x, saved = inputs(), TRL["results"][trl_type]
    adv = group_advantages(x["rewards"], "group").flatten()
    logp = x["logp"].clone().requires_grad_()
    ours, metrics = grpo_loss(logp, x["old"], adv, x["mask"],
                              LossConfig(beta=TRL["beta"], eps_low=TRL["eps"], eps_high=TRL["eps"],
                                         aggregation=aggregation),
                              ref_logp=x["ref"], max_tokens=TRL["max_tokens"])
    (grad_ours,) = torch.autograd.grad(ours, logp)
    assert ours.item() == pytest.approx(saved["loss"], rel=1e-6, abs=1e-7)
    assert torch.allclose(grad_ours, torch.tensor(saved["grad"]), atol=1e-7)
    assert float(metrics["kl"]) == pytest.approx(saved["kl"], rel=1e-5)
    assert float(metrics["clip_fraction"]) == pytest.approx(saved["clip_fraction"], rel=1e-5)


def test_trl_advantage_formula():
    # TRL: (r - mean_grouped) / (std_grouped + 1e-4), std unbiased, per group of num_generations
    rewards = torch.tensor([0.3, 0.9, 0.1, 0.5, 1.0, 1.0, 0.0, 0.2])
    grouped = rewards.view(-1, 4)
    mean = grouped.mean(1).repeat_interleave(4)
    std = grouped.std(1).repeat_interleave(4)
    trl = (rewards - mean) / (std + 1e-4)
    assert torch.allclose(group_advantages(grouped).flatten(), trl, atol=1e-6)


def test_parity_metrics_by_hand():
    from grpo.parity import parity_metrics

    # d = log p_learner - log p_engine = [log(.25/.5), 0] = [-log 2, 0]; r = [0.5, 1]
    # k3 = r - 1 - d = [0.5 - 1 + log 2, 0] = [0.193147, 0] -> mean 0.0965736
    engine = torch.tensor([[math.log(0.5), math.log(0.25), 9.0]])
    learner = torch.tensor([[math.log(0.25), math.log(0.25), -9.0]])
    mask = torch.tensor([[True, True, False]])  # the third is padding
    m = parity_metrics(engine, learner, mask)
    assert m["parity/mismatch_kl"] == pytest.approx((0.5 - 1 + math.log(2)) / 2, abs=1e-6)
    assert m["parity/mean_abs_logp_diff"] == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert m["parity/max_abs_logp_diff"] == pytest.approx(math.log(2), abs=1e-6)
