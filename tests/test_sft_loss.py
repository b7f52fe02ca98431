"""SFT loss: hand-computed values and the invariances of token-level normalisation."""

import math

import pytest
import torch

from policy.load import load_policy
from sft.loss import count_targets, normalized_loss, target_token_loss_sum
from train.schedule import lr_multiplier


def test_target_token_loss_sum_by_hand():
    # Vocabulary of 2, uniform logits: each target token costs ln 2. Targets: tokens 1 and 2 of
    # row 0 (position 0 is never a target even if masked in). So the sum is 2 ln 2.
    logits = torch.zeros(1, 3, 2)
    ids = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[True, True, True]])
    assert target_token_loss_sum(logits, ids, mask).item() == pytest.approx(2 * math.log(2))
    assert count_targets(mask) == 2
    # Logit 3 on the right token: loss = ln(1 + e^-3) for that token.
    logits[0, 0] = torch.tensor([0.0, 3.0])
    expected = math.log(1 + math.exp(-3)) + math.log(2)
    assert target_token_loss_sum(logits, ids, mask).item() == pytest.approx(expected, rel=1e-6)
    only_last = torch.tensor([[False, False, True]])
    assert target_token_loss_sum(logits, ids, only_last).item() == pytest.approx(math.log(2))


def _grads(model, batches, step_targets, world_size=1):
    model.zero_grad()
    for ids, mask in batches:
        logits = model(ids, use_cache=False).logits
        normalized_loss(target_token_loss_sum(logits, ids, mask), step_targets, world_size).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_policy("tiny", moe_overrides={"token_dropping": False})
    return model.train()


def _data(n=8, t=12):
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (n, t))
    mask = torch.rand(n, t) < 0.6  # rows with very different numbers of target tokens
    mask[0] = False
    mask[0, -2:] = True
    return ids, mask


def test_gradient_accumulation_invariance(tiny):
    ids, mask = _data()
    total = count_targets(mask)
    full = _grads(tiny, [(ids, mask)], total)
    accumulated = _grads(tiny, [(ids[i : i + 1], mask[i : i + 1]) for i in range(8)], total)
    for name, g in full.items():
        torch.testing.assert_close(accumulated[name], g, rtol=1e-4, atol=1e-7)


def test_data_parallel_invariance(tiny):
    # Two ranks each see half the batch; gradients are averaged as DDP/FSDP do.
    ids, mask = _data()
    total = count_targets(mask)
    single = _grads(tiny, [(ids, mask)], total)
    rank0 = _grads(tiny, [(ids[:4], mask[:4])], total, world_size=2)
    rank1 = _grads(tiny, [(ids[4:], mask[4:])], total, world_size=2)
    for name, g in single.items():
        torch.testing.assert_close((rank0[name] + rank1[name]) / 2, g, rtol=1e-4, atol=1e-7)


def test_mean_of_micro_batch_means_would_differ(tiny):
    # The naive alternative (average of per-micro-batch means) is not invariant: guard the test's power.
    ids, mask = _data()
    full = _grads(tiny, [(ids, mask)], count_targets(mask))
    tiny.zero_grad()
    for i in range(8):
        logits = tiny(ids[i : i + 1], use_cache=False).logits
        (target_token_loss_sum(logits, ids[i : i + 1], mask[i : i + 1]) / count_targets(mask[i : i + 1]) / 8).backward()
    g = tiny.lm_head.weight.grad
    assert not torch.allclose(g, full["lm_head.weight"], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "step, schedule, expected",
    [
        (0, "cosine", 0.1),  # warm-up: (0 + 1) / 10
        (9, "cosine", 1.0),
        (10, "cosine", 1.0),  # cosine starts at 1 after warm-up
        (109, "cosine", 0.1),  # and ends at min_ratio on the last step (total 110)
        (59, "cosine", 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 99))),
        (50, "step", 1.0),
        (88, "step", 0.316),  # >= 0.8 * 110
        (99, "step", 0.316 ** 2),  # >= 0.9 * 110
        (50, "constant", 1.0),
    ],
)
def test_lr_schedule(step, schedule, expected):
    assert lr_multiplier(step, 110, 10, schedule, 0.1, [0.8, 0.9], 0.316) == pytest.approx(expected)


@pytest.mark.parametrize("preset", ["tiny", "smollm2-135m-instruct"])
def test_target_only_head_equals_full_logits(preset):
    # The fast path (head applied only where the next token is a target) is the same loss and
    # the same gradients as cross-entropy over the full logits; SmolLM2 ties head and embeddings.
    from sft.data import SFTBatch
    from sft.trainer import forward_loss
    from train.distributed import DistInfo

    model, _ = load_policy(preset, moe_overrides={"token_dropping": False} if preset == "tiny" else None)
    model.train()
    ids, mask = _data(n=2, t=10)
    ids = ids % model.config.vocab_size
    batch = SFTBatch(ids, torch.arange(10).expand(2, 10), mask, torch.zeros(2, 10, dtype=torch.long))
    fast, out = forward_loss(model, batch, DistInfo())
    assert out.logits.shape[1] == 0  # the model's own head was skipped
    fast.backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full = target_token_loss_sum(model(ids, position_ids=batch.position_ids, use_cache=False).logits, ids, mask)
    full.backward()
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-4, atol=1e-5)  # summation order


def test_gradient_checkpointing_gives_the_same_gradients():
    # Recomputation in backward must see the same routing (our MoE keeps its context until the
    # next forward), including the balance losses.
    from sft.data import SFTBatch
    from sft.trainer import forward_loss
    from train.distributed import DistInfo

    grads = []
    for checkpointing in (False, True):
        model, _ = load_policy("tiny", moe_overrides={"token_dropping": False})
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids, mask = _data(n=2, t=16)
        batch = SFTBatch(ids, torch.arange(16).expand(2, 16), mask, torch.zeros(2, 16, dtype=torch.long))
        loss, out = forward_loss(model, batch, DistInfo())
        (loss + out.aux_loss).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7)
