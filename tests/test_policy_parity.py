"""Our DeepseekV2Policy against transformers' DeepseekV2ForCausalLM, and the MoE extras in place."""

import copy

import pytest
import torch
from transformers import DeepseekV2ForCausalLM

from policy.experts import grouped_experts_forward, loop_experts_forward
from policy.model import DeepseekV2Policy
from policy.moe import MoEOptions
from policy.presets import DEEPSEEK_PRESETS
from tests.conftest import small_config

EXTRAS_OFF = MoEOptions()
EXTRAS_ON = MoEOptions(expert_balance_alpha=0.003, device_balance_alpha=0.05, comm_balance_alpha=0.02,
                       token_dropping=True, protected_fraction=0.0)


def _pair(config, options):
    torch.manual_seed(0)
    reference = DeepseekV2ForCausalLM(copy.deepcopy(config)).eval()
    reference.config._experts_implementation = "eager"  # transformers' per-expert loop
    ours = DeepseekV2Policy(copy.deepcopy(config), options).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("method", ["greedy", "group_limited_greedy"])
@pytest.mark.parametrize("q_lora_rank", [None, 48])
def test_logits_match_transformers_with_extras_off(method, q_lora_rank):
    config = small_config(topk_method=method, q_lora_rank=q_lora_rank)
    reference, ours = _pair(config, EXTRAS_OFF)
    ids = torch.randint(0, config.vocab_size, (3, 17))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding in row 0
    torch.testing.assert_close(ours(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits,
                               rtol=1e-5, atol=1e-5)
    # training mode without dropping computes the same function
    ours.train()
    reference.train()
    torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_tiny_preset_matches_transformers_in_eval_with_its_extras_on():
    config = small_config(**{k: v for k, v in DEEPSEEK_PRESETS["tiny"]["config"].items()})
    reference, ours = _pair(config, DEEPSEEK_PRESETS["tiny"]["moe"])
    ids = torch.randint(0, config.vocab_size, (2, 33))
    torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_token_dropping_only_in_training(config):
    reference, ours = _pair(config, EXTRAS_ON)
    ids = torch.randint(0, config.vocab_size, (4, 32))
    eval_logits = ours(ids).logits
    torch.testing.assert_close(eval_logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert all(s.drop_rate == 0.0 for s in ours(ids).router_stats)

    ours.train()
    dropped = ours(ids)
    assert max(s.drop_rate for s in dropped.router_stats) > 0.0
    assert not torch.allclose(dropped.logits, eval_logits, atol=1e-4)
    # RL log-probs: training mode with dropping forced off equals the eval function
    no_drop = ours(ids, token_dropping=False)
    assert all(s.drop_rate == 0.0 for s in no_drop.router_stats)
    torch.testing.assert_close(no_drop.logits, eval_logits, rtol=1e-5, atol=1e-5)


def test_protected_fraction_one_drops_nothing(config):
    options = MoEOptions(token_dropping=True, protected_fraction=1.0)
    _, ours = _pair(config, options)
    ours.train()
    out = ours(torch.randint(0, config.vocab_size, (4, 32)))
    assert all(s.drop_rate == 0.0 for s in out.router_stats)


def test_balance_losses_returned_in_training_only(config):
    _, ours = _pair(config, EXTRAS_ON)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    assert ours(ids).aux_loss is None
    ours.train()
    out = ours(ids)
    assert set(out.balance_losses) == {"expert", "device", "communication"}
    torch.testing.assert_close(out.aux_loss, sum(out.balance_losses.values()))
    out.aux_loss.backward()
    gate = ours.moe_layers()[0].gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_routing_context_from_packed_documents_and_padding(config):
    # Row 0 packs documents 0 and 1 then one pad; row 1 is one document then two pads.
    _, ours = _pair(config, EXTRAS_ON)
    seq_ids = torch.tensor([[0, 0, 1, 1, -1], [0, 0, 0, -1, -1]])
    ctx = ours.routing_context(2, 5, None, seq_ids, None)
    assert ctx.num_seqs == 3
    assert ctx.seq_index.tolist() == [0, 0, 1, 1, -1, 2, 2, 2, -1, -1]
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    ctx = ours.routing_context(2, 5, mask, None, None)
    assert ctx.num_seqs == 2
    assert ctx.seq_index.tolist() == [-1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert not ctx.token_dropping  # eval mode


def test_protected_sequences_are_about_the_requested_fraction(config):
    _, ours = _pair(config, MoEOptions(token_dropping=True, protected_fraction=0.1))
    ours.train()
    torch.manual_seed(0)
    counts = [int(ours.routing_context(20, 3, None, None, None).protected.sum()) // 3 for _ in range(400)]
    assert abs(sum(counts) / 400 - 2.0) < 0.15  # 10% of 20 sequences on average
    assert set(counts) <= {2}  # floor(0.1 * 20 + u) is always 2 here


@pytest.mark.parametrize("with_drops", [False, True])
def test_grouped_experts_equal_loop_and_transformers(with_drops):
    torch.manual_seed(0)
    n, h, i, e, k = 300, 32, 24, 64, 6
    x = torch.randn(n, h, requires_grad=True)
    gate_up = (torch.randn(e, 2 * i, h) * 0.1).requires_grad_()
    down = (torch.randn(e, h, i) * 0.1).requires_grad_()
    weights = torch.rand(n, k)
    indices = torch.stack([torch.randperm(e - 4)[:k] for _ in range(n)])  # 4 experts never hit
    keep = torch.rand(n, k) > 0.3 if with_drops else None
    act = torch.nn.functional.silu

    ours = grouped_experts_forward(x, indices, weights, keep, gate_up, down, act)
    grads = torch.autograd.grad(ours.square().sum(), (x, gate_up, down))
    ref = loop_experts_forward(x, indices, weights, keep, gate_up, down, act)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, gate_up, down))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)

    if not with_drops:  # transformers' own eager loop on the same weights
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Experts

        config = small_config(n_routed_experts=e, hidden_size=h, moe_intermediate_size=i)
        config._experts_implementation = "eager"
        hf = DeepseekV2Experts(config)
        with torch.no_grad():
            hf.gate_up_proj.copy_(gate_up)
            hf.down_proj.copy_(down)
        torch.testing.assert_close(ours, hf(x, indices, weights), rtol=1e-5, atol=1e-5)


def test_grouped_experts_gradients_are_the_same_every_run_on_two_threads():
    """The input gradient sums each token's top-k contributions; with two threads that sum must
    not depend on scheduling (advanced indexing's accumulating backward did: SFT runs differed)."""
    torch.set_num_threads(2)  # conftest puts it back to one after the test
    torch.manual_seed(0)
    n, h, i, e, k = 4096, 64, 16, 16, 4
    x = torch.randn(n, h, requires_grad=True)
    gate_up, down = torch.randn(e, 2 * i, h) * 0.1, torch.randn(e, h, i) * 0.1
    indices = torch.stack([torch.randperm(e)[:k] for _ in range(n)])
    weights, grad_out = torch.rand(n, k), torch.randn(n, h)
    grads = [torch.autograd.grad(grouped_experts_forward(x, indices, weights, None, gate_up, down,
                                                         torch.nn.functional.silu), x, grad_out)[0] for _ in range(4)]
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_moe_layer_gradients_match_transformers(config):
    reference, ours = _pair(config, EXTRAS_OFF)
    reference.train()
    ours.train()
    ids = torch.randint(0, config.vocab_size, (2, 12))
    reference(ids, labels=ids).loss.backward()
    ours(ids, labels=ids).loss.backward()
    ours_params = dict(ours.named_parameters())
    assert set(ours_params) == {name for name, _ in reference.named_parameters()}  # same names
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ours_params[name].grad, p.grad, rtol=1e-4, atol=1e-7)
