"""The mixer's fast assistant masks (token byte lengths, no character offsets) equal the masks
from the tokenizer's own offsets, for every chat, and fall back to offsets when they cannot."""

import numpy as np
import pytest
from tokenizers import AddedToken

from data_tools.chat import (
    _mask_from_bytes,
    _mask_from_offsets,
    assistant_spans,
    render_chat,
    render_chats,
    token_byte_lengths,
)
from policy.load import load_tokenizer
from policy.tokenizer import byte_chat_tokenizer

CHATS = [
    [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "12 + 30 = 42."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}],
    # multi-byte characters on both sides of the span boundaries, split by byte-level BPE
    [{"role": "user", "content": "Traduis « café » en 日本語 🙂"},
     {"role": "assistant", "content": "コーヒー ☕ — e\u0301 naïve 🙂🙂"}],
    # the text of a special token inside a message, and an empty answer
    [{"role": "user", "content": "print('<|im_end|>')"}, {"role": "assistant", "content": "<|im_start|>x"},
     {"role": "user", "content": "  trailing spaces   "}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "tabs\tand\nnew\n\nlines"},
     {"role": "assistant", "content": "\n  def f():\n\treturn 1\n"}],
]


def _by_offsets(tok, chat):
    text, spans = assistant_spans(tok, chat)
    ids, mask = _mask_from_offsets(tok, text, spans)
    return ids.tolist(), mask.tolist()


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer("smollm2-135m-instruct")


@pytest.mark.parametrize("which", ["smollm2", "byte"])
def test_byte_masks_equal_offset_masks(which, smollm2):
    tok = smollm2 if which == "smollm2" else byte_chat_tokenizer()
    table = token_byte_lengths(tok)
    assert table is not None
    for chat in CHATS:  # the fast path is taken for every chat, not the fallback
        text, spans = assistant_spans(tok, chat)
        ids = tok._tokenizer.encode(text, add_special_tokens=False).ids
        assert _mask_from_bytes(text, ids, spans, table) is not None
    fast = render_chats(tok, CHATS)
    assert fast == [_by_offsets(tok, chat) for chat in CHATS]
    assert [render_chat(tok, chat) for chat in CHATS] == fast
    for (ids, mask), chat in zip(fast, CHATS, strict=True):
        assert ids == tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        answers = [m["content"] for m in chat if m["role"] == "assistant"]
        # the targets spell the answers and their end-of-turn tokens, nothing else; an answer that
        # opens with a newline shares its first token with the header's newline ("\n\n"), which
        # starts in the header and so is not a target, on either path
        if which == "smollm2" and not any(a[:1].isspace() for a in answers):
            assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "".join(
                a + "<|im_end|>" for a in answers)


def test_byte_masks_hand_computed():
    # "aé" + "b" as tokens of 1, 2 (é is two bytes) and 1 bytes; the span covers characters [1, 3)
    table = [0, 1, 2, 1]
    assert _mask_from_bytes("aéb", np.array([1, 2, 3]), [(1, 3)], np.array(table)).tolist() == [False, True, True]
    assert _mask_from_bytes("aéb", np.array([1, 2]), [(1, 3)], np.array(table)) is None  # 3 bytes of 4: fall back


def test_tokens_that_swallow_whitespace_fall_back_to_offsets(smollm2):
    tok = byte_chat_tokenizer()
    tok.add_tokens([AddedToken("<tool>", rstrip=True, lstrip=True)])  # absorbs the spaces around it
    chat = [{"role": "user", "content": "call   <tool>   now"}, {"role": "assistant", "content": "ok <tool>  done"}]
    text, spans = assistant_spans(tok, chat)
    ids = np.array(tok._tokenizer.encode(text, add_special_tokens=False).ids)
    assert _mask_from_bytes(text, ids, spans, token_byte_lengths(tok)) is None
    assert render_chats(tok, [chat]) == [_by_offsets(tok, chat)]


def test_tokenizers_with_a_normalizer_use_offsets():
    from tokenizers import normalizers

    tok = byte_chat_tokenizer()
    tok._tokenizer.normalizer = normalizers.Lowercase()
    assert token_byte_lengths(tok) is None
    chat = CHATS[0]
    assert render_chats(tok, [chat]) == [_by_offsets(tok, chat)]
