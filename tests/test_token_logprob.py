"""The fused token log-prob and entropy (policy/token_logprob.py) against autograd's log_softmax
path: values, entropies and gradients, at temperature 1 and 0.7, from fp32 and bf16 logits, in
one pass or in chunks of positions; and one case by hand."""

from __future__ import annotations

import pytest
import torch

from policy.token_logprob import token_logprobs


def reference(logits, targets, temperature):
    z = logits.float()
    if temperature not in (0, 1.0):
        z = z / temperature
    all_logp = z.log_softmax(-1)
    return all_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(all_logp.exp() * all_logp).sum(-1)


@pytest.mark.parametrize("chunk", [1 << 22, 300])  # one pass, or positions 3 at a time (15 positions: 5 chunks)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_log_softmax_in_value_entropy_and_gradient(temperature, dtype, chunk, monkeypatch):
    import policy.token_logprob as module

    monkeypatch.setattr(module, "CHUNK_ELEMENTS", chunk)
    assert len(module._chunks(torch.zeros(15, 97))) == (1 if chunk > 10_000 else 5)
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 97) * 4).to(dtype)
    targets = torch.randint(0, 97, (3, 5))
    upstream = torch.randn(3, 5)  # an arbitrary gradient from the loss
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    logp, entropy = token_logprobs(a, targets, temperature, entropy=True)
    want_logp, want_entropy = reference(b, targets, temperature)
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    assert logp.dtype == torch.float32 and torch.allclose(logp, want_logp, atol=tol)
    assert torch.allclose(entropy, want_entropy.detach(), atol=1e-4) and not entropy.requires_grad  # sums of 97 terms
    (logp * upstream).sum().backward()
    (want_logp * upstream).sum().backward()
    assert a.grad.dtype == dtype
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=1e-6 if dtype == torch.float32 else 1e-2)
    assert token_logprobs(a, targets, temperature)[1] is None


def test_a_hand_computed_case():
    logits = torch.tensor([[[0.0, 0.0, torch.log(torch.tensor(2.0))]]], requires_grad=True)  # softmax 1/4 1/4 1/2
    logp, entropy = token_logprobs(logits, torch.tensor([[2]]), entropy=True)
    assert logp.item() == pytest.approx(torch.log(torch.tensor(0.5)).item())
    assert entropy.item() == pytest.approx(-(2 * 0.25 * torch.log(torch.tensor(0.25)) + 0.5 * torch.log(
        torch.tensor(0.5))).item())
    logp.sum().backward()
    assert logits.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.5])  # onehot - softmax
