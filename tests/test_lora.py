"""LoRA on the tiny DeepSeek-V2 policy (policy/lora.py): the factors our grouped experts read give
peft's own deltas; the adapted model equals the merged one; adapter gradients are full
fine-tuning's gradients projected onto the factors; adapters disabled = the base policy; an update
changes only adapter tensors; the merged state equals peft's `merge_and_unload`."""

from __future__ import annotations

import copy

import pytest
import torch

from policy.config import LoraConfig
from policy.load import load_policy
from policy.lora import adapters_disabled, apply_lora, lora_delta, lora_layout, merged_state_dict

IDS = torch.tensor([[3, 17, 42, 99, 7, 250, 31, 8, 64, 5], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
EXPERTS = "model.layers.1.mlp.experts.gate_up_proj"


def _lora_model(seed: int = 0, **cfg):
    base, _ = load_policy("tiny")
    model = apply_lora(base, LoraConfig(enabled=True, r=4, alpha=8, routed_experts=True, **cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B = 0 at initialisation: give every adapter a non-zero update
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _plain(state):
    model, _ = load_policy("tiny")
    model.load_state_dict(state, strict=True)
    return model


def test_factors_give_peft_deltas_for_linears_and_experts():
    from peft.tuners.lora import LoraLayer

    model = _lora_model()
    state = model.state_dict()
    layout = lora_layout(model)
    seen = {"linear": 0, "experts": 0}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = next(k for k, v in layout.items() if v["A"].startswith(name + ".lora_A"))
        entry = layout[key]
        shape = module.get_param().shape if entry["experts"] else module.weight.shape
        ours = lora_delta(state[entry["A"]], state[entry["B"]], entry["scaling"], shape, entry["experts"])
        torch.testing.assert_close(ours, module.get_delta_weight("default"), rtol=1e-6, atol=1e-7)
        seen["experts" if entry["experts"] else "linear"] += 1
    moe_layers = len(model.get_base_model().moe_layers())
    assert seen["experts"] == 2 * moe_layers and seen["linear"] > 4  # gate_up and down per MoE layer, attention


@pytest.mark.parametrize("impl", ["grouped", "dense", "loop"])
def test_adapted_model_equals_merged_weights_and_peft_merge(impl):
    model = _lora_model()
    for moe in model.get_base_model().moe_layers():
        moe.options = type(moe.options)(**{**vars(moe.options), "expert_impl": impl, "token_dropping": False})
    model.eval()
    merged = merged_state_dict(model.state_dict(), lora_layout(model))
    reference = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's own merge, independent of ours
    assert merged.keys() == reference.keys()
    for name in merged:
        torch.testing.assert_close(merged[name], reference[name], rtol=1e-6, atol=1e-7, msg=name)
    base = load_policy("tiny")[0].state_dict()
    assert not torch.equal(merged[EXPERTS], base[EXPERTS])
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        plain = _plain(merged).eval()(input_ids=IDS).logits
    torch.testing.assert_close(adapted, plain, rtol=1e-5, atol=1e-5)


def test_disabled_adapters_give_the_base_policy_exactly():
    model = _lora_model().eval()
    base = load_policy("tiny")[0].eval()
    with torch.no_grad():
        with adapters_disabled(model):
            off = model(input_ids=IDS).logits
        on = model(input_ids=IDS).logits
        expected = base(input_ids=IDS).logits
    assert torch.equal(off, expected)
    assert (on - expected).abs().max() > 1e-3  # the adapters do change the policy


def _loss(model):
    logits = model(input_ids=IDS).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), IDS[:, 1:].flatten())


def test_adapter_gradients_are_projected_full_gradients():
    """W' = W + s B A: dL/dB = s G A^T and dL/dA = s B^T G, G = dL/dW' of full fine-tuning at W'
    (per expert for the expert stacks)."""
    from policy.experts import expert_factors

    model = _lora_model()
    model.train()
    _loss(model).backward()
    layout = lora_layout(model)
    params = dict(model.named_parameters())
    full = _plain(merged_state_dict(model.state_dict(), layout))
    full.train()
    _loss(full).backward()
    full_grads = {n: p.grad for n, p in full.named_parameters()}
    checked = 0
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.q_b_proj.weight",
                 EXPERTS, "model.layers.1.mlp.experts.down_proj"):
        entry, g = layout[name], full_grads[name]
        a, b, s = params[entry["A"]], params[entry["B"]], entry["scaling"]
        if entry["experts"]:  # per expert: d lhs_e = s G_e rhs_e^T, d rhs_e = s lhs_e^T G_e, mapped back to B, A
            lhs, rhs = expert_factors(a, b, g.shape, entry["experts"])
            want_b, want_a = torch.autograd.grad((lhs, rhs), (b, a), grad_outputs=(
                s * torch.bmm(g, rhs.detach().transpose(1, 2)), s * torch.bmm(lhs.detach().transpose(1, 2), g)))
        else:
            want_b, want_a = s * g @ a.detach().t(), s * b.detach().t() @ g
        torch.testing.assert_close(b.grad, want_b, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(a.grad, want_a, rtol=1e-4, atol=1e-7, msg=name)
        assert b.grad.abs().max() > 0 and a.grad.abs().max() > 0
        checked += 1
    assert checked == 4


def test_an_update_changes_only_adapter_tensors():
    model = _lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    _loss(model).backward()
    opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (".lora_" in name), name
    assert any("experts" in n and ".lora_A" in n for n in trainable)
