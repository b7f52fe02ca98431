"""Packing: rows are well-formed, and a packed batch has the same loss as the unpacked one."""

import random

import numpy as np
import pytest
import torch

from data_tools.chat import render_chat
from data_tools.packing import Packer, pack_documents
from data_tools.synthetic import arithmetic_chats
from policy.load import load_policy
from policy.tokenizer import byte_chat_tokenizer
from sft.data import collate, rows_to_columns
from sft.loss import count_targets, target_token_loss_sum


def _docs(n, seed=0):
    rng = random.Random(seed)
    return [([rng.randrange(256) for _ in range(rng.randint(3, 40))],
             [rng.random() < 0.5 for _ in range(40)]) for _ in range(n)]


def test_rows_hold_whole_documents_with_restarting_positions():
    docs = [(ids, mask[: len(ids)]) for ids, mask in _docs(200)]
    rows = list(pack_documents(docs, 64, pad_id=999))
    assert all(len(r.input_ids) == 64 for r in rows)
    recovered = []
    for r in rows:
        ids, pos, mask = r.input_ids.tolist(), r.position_ids.tolist(), r.loss_mask.tolist()
        assert all(i == 999 for i in ids[r.num_tokens:])
        assert not any(mask[r.num_tokens:])
        starts = [t for t in range(r.num_tokens) if pos[t] == 0] + [r.num_tokens]
        for a, b in zip(starts, starts[1:], strict=False):
            assert pos[a:b] == list(range(b - a))
            recovered.append((ids[a:b], mask[a:b]))
    # every document exactly once; its first token is never a target (no context to predict it from)
    expected = [(ids, [False, *mask[1:]]) for ids, mask in docs]
    assert sorted(map(str, recovered)) == sorted(map(str, expected))
    assert sum(r.num_tokens for r in rows) / (64 * len(rows)) > 0.9  # best-fit packs tightly


def test_long_documents_are_truncated_and_counted():
    packer = Packer(8, pad_id=0)
    rows = packer.add(list(range(20)), [True] * 20)
    assert packer.truncated == 1 and rows[0].input_ids.tolist() == list(range(8))
    assert rows[0].loss_mask.tolist() == [False] + [True] * 7


def test_best_fit_by_hand():
    # rows of 10; documents of 6, 3, 4, 1 tokens (ids = document number, every token a target):
    # 6 opens row A; 3 fits A best (room 1); 4 does not fit A, opens B; 1 fills A exactly, which
    # closes it; flush closes B, padded with 0 and positions counting on from 0.
    packer = Packer(10, pad_id=0)
    docs = [([d] * n, [True] * n) for d, n in [(1, 6), (2, 3), (3, 4), (4, 1)]]
    out = [row for ids, mask in docs for row in packer.add(ids, mask)] + packer.flush()
    assert [r.input_ids.tolist() for r in out] == [[1] * 6 + [2] * 3 + [4], [3] * 4 + [0] * 6]
    assert [r.position_ids.tolist() for r in out] == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]
    assert [r.loss_mask.tolist() for r in out] == [[False] + [True] * 5 + [False, True, True, False],
                                                   [False, True, True, True] + [False] * 6]
    assert [r.num_tokens for r in out] == [10, 4]
    assert out[0].input_ids.dtype == np.int32 and out[0].loss_mask.dtype == np.bool_


def test_chat_mask_matches_transformers_generation_mask():
    tok = byte_chat_tokenizer()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    ids, mask = render_chat(tok, chat)
    ref = tok.apply_chat_template(chat, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
    assert ids == ref["input_ids"]
    assert mask == [bool(m) for m in ref["assistant_masks"]]
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "Hello!<|im_end|>4<|im_end|>"


@pytest.mark.parametrize("preset", ["tiny"])
def test_packed_loss_equals_unpacked_loss(preset):
    model, tok = load_policy(preset, moe_overrides={"token_dropping": False})
    model.train()
    docs = [render_chat(tok, chat) for chat in arithmetic_chats(12, seed=1)]
    packed = collate(rows_to_columns(list(pack_documents(docs, 96, tok.pad_token_id))))
    assert packed.input_ids.shape[0] < len(docs)  # really packed

    out = model(input_ids=packed.input_ids, position_ids=packed.position_ids, sequence_ids=packed.sequence_ids,
                use_cache=False)
    packed_sum = target_token_loss_sum(out.logits, packed.input_ids, packed.loss_mask)
    packed_sum.backward()
    packed_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()

    unpacked_sum = 0.0
    for ids, mask in docs:
        ids_t, mask_t = torch.tensor([ids]), torch.tensor([mask])
        logits = model(ids_t, use_cache=False).logits
        unpacked_sum = unpacked_sum + target_token_loss_sum(logits, ids_t, mask_t)
    unpacked_sum.backward()
    assert count_targets(packed.loss_mask) == sum(sum(m[1:]) for _, m in docs)
    assert packed_sum.item() == pytest.approx(unpacked_sum.item(), rel=1e-5)
    torch.testing.assert_close(model.lm_head.weight.grad, packed_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", ["tiny", "smollm2-135m-instruct"])
def test_one_render_spans_equal_prefix_render_spans(preset):
    from data_tools.chat import _prefix_spans, assistant_spans
    from policy.load import load_tokenizer

    tok = load_tokenizer(preset)
    rng = random.Random(0)
    for _ in range(30):
        chat = [{"role": "system", "content": "Be kind."}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            q = " ".join(rng.choice(["hi", "why", "sum", "4", "ok"]) for _ in range(rng.randint(1, 5)))
            chat += [{"role": "user", "content": q}, {"role": "assistant", "content": rng.choice([q, "ok", "4 ok"])}]
        text, fast = assistant_spans(tok, chat)
        assert fast == _prefix_spans(tok, chat, text)
