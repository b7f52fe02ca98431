"""Rendering chats with the policy's chat template: training rows with assistant-only loss masks
(`render_chat_arrays`, `render_chats`, `render_chat`) and prompts ready for generation (`encode_prompts`).

`render_chat(tokenizer, messages)` returns token ids and a mask (True = the token is a training
target). Assistant spans are found by rendering prefixes of the conversation: the text the
template adds for assistant turn i is everything between the render of messages[:i] with the
generation prompt and the render of messages[:i+1]. This works for any chat template (SmolLM2's
has no `{% generation %}` tags); it requires the template to render conversations
incrementally (each prefix's text is a prefix of the whole), which is checked.
"""

from __future__ import annotations

import numpy as np


class TemplateError(ValueError):
    """The tokenizer cannot render chats the way SFT needs."""


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _template_shape(tokenizer) -> tuple[str, str] | None:
    """(assistant header, end-of-turn suffix) learnt from one probe conversation, or None when
    the template does not render a probe the simple way (then spans come from prefix renders)."""
    key = tokenizer.chat_template
    if key in _SHAPES:
        return _SHAPES[key]
    user, answer = "\x01PROBE-USER\x01", "\x01PROBE-ANSWER\x01"
    base = _render(tokenizer, [{"role": "user", "content": user}], False)
    gen = _render(tokenizer, [{"role": "user", "content": user}], True)
    full = _render(tokenizer, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], False)
    shape = None
    if gen.startswith(base) and full.startswith(gen) and full[len(gen):].startswith(answer):
        shape = (gen[len(base):], full[len(gen) + len(answer):].rstrip())
    _SHAPES[key] = shape
    return shape


_SHAPES: dict[str, tuple[str, str] | None] = {}


def _prefix_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], True)) if i else 0
        end_text = _render(tokenizer, messages[: i + 1], False)
        if not text.startswith(end_text):
            raise TemplateError("chat template does not render conversations incrementally")
        spans.append((start, len(end_text.rstrip())))  # the turn's trailing newline is template, not answer
    return spans


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of assistant turns.

    Fast path: one render, each assistant turn located as header + content + end-of-turn text.
    Any turn that is not found verbatim (a template that rewrites history, say) sends the whole
    chat to the prefix-render method, which is exact for any incremental template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    text = _render(tokenizer, messages, False)
    shape = _template_shape(tokenizer)
    if shape is not None:
        header, suffix = shape
        spans, pos = [], 0
        for message in messages:
            if message["role"] != "assistant":
                continue
            at = text.find(header + message["content"] + suffix, pos)
            if at < 0:
                break
            start = at + len(header)
            pos = start + len(message["content"]) + len(suffix)
            spans.append((start, pos))
        else:
            return text, spans
    return text, _prefix_spans(tokenizer, messages, text)


def token_byte_lengths(tokenizer) -> np.ndarray | None:
    """Bytes of text each token id stands for, for a byte-level BPE tokenizer with no normalizer
    (GPT-2, SmolLM2, Llama 3, DeepSeek); None for any other tokenizer. Each character of a
    byte-level vocabulary entry is one byte; an added token stands for its content's UTF-8 bytes."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or backend.normalizer is not None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    size = backend.get_vocab_size(with_added_tokens=True)
    table = getattr(tokenizer, "_deepalign_byte_lengths", None)  # built once per tokenizer object
    if table is None or len(table) != size:
        table = np.zeros(size, dtype=np.int64)
        for token, i in backend.get_vocab(with_added_tokens=True).items():
            table[i] = len(token)
        for i, added in backend.get_added_tokens_decoder().items():
            table[i] = len(added.content.encode("utf-8"))
        tokenizer._deepalign_byte_lengths = table
    return table


def _mask_from_starts(starts: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(starts), dtype=bool)
    for begin, end in spans:
        mask |= (starts >= begin) & (starts < end)
    return mask


def _mask_from_offsets(tokenizer, text: str, spans) -> tuple[np.ndarray, np.ndarray]:
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None:  # a fast tokenizer: call the Rust encoder directly (no Python per token)
        enc = backend.encode(text, add_special_tokens=False)
        ids, offsets = enc.ids, enc.offsets
    else:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))
    return np.array(ids, dtype=np.int32), _mask_from_starts(starts, spans)


def _mask_from_bytes(text: str, ids: np.ndarray, spans, table: np.ndarray) -> np.ndarray | None:
    """The mask from each token's byte length; None when the tokens do not spell the text's bytes
    one for one (then the caller asks for character offsets)."""
    lengths = table[ids]
    ends = np.cumsum(lengths)
    if text.isascii():
        size, byte_spans = len(text), spans
    else:
        size = len(text.encode("utf-8"))
        byte_spans = [(len(text[:b].encode("utf-8")), len(text[:e].encode("utf-8"))) for b, e in spans]
    if (ends[-1] if len(ends) else 0) != size:
        return None
    return _mask_from_starts(ends - lengths, byte_spans)


def render_chat_arrays(tokenizer, chats: list[list[dict]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids of each chat (int32) and its assistant-only loss mask (bool, True = counts in the
    loss), as NumPy arrays.

    A token is a target when its first character lies inside an assistant span. For a byte-level
    BPE tokenizer the chats are encoded in one batch without character offsets and each token's
    start comes from the byte lengths of the tokens before it (a third faster); a chat whose
    tokens do not add up to its bytes falls back to the tokenizer's offsets, which is exact for
    any tokenizer.
    """
    rendered = [assistant_spans(tokenizer, messages) for messages in chats]
    table = token_byte_lengths(tokenizer)
    if table is None:
        return [_mask_from_offsets(tokenizer, text, spans) for text, spans in rendered]
    encodings = tokenizer._tokenizer.encode_batch_fast([text for text, _ in rendered], add_special_tokens=False)
    out = []
    for (text, spans), enc in zip(rendered, encodings, strict=True):
        ids = np.array(enc.ids, dtype=np.int32)
        mask = _mask_from_bytes(text, ids, spans, table)
        out.append((ids, mask) if mask is not None else _mask_from_offsets(tokenizer, text, spans))
    return out


def render_chats(tokenizer, chats: list[list[dict]]) -> list[tuple[list[int], list[bool]]]:
    """`render_chat_arrays` as Python lists."""
    return [(ids.tolist(), mask.tolist()) for ids, mask in render_chat_arrays(tokenizer, chats)]


def render_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """`render_chats` for one chat."""
    return render_chats(tokenizer, [messages])[0]


def encode_prompts(tokenizer, prompts: list, chat: bool = True) -> list[list[int]]:
    """Token ids per prompt, ready for generation: a string is one user turn, a list of messages is
    the conversation so far; both end with the template's generation prompt. Without a chat template
    (or with chat False) a string is tokenised as it is; a list of messages always needs the template."""
    out = []
    for p in prompts:
        if not isinstance(p, str) and not tokenizer.chat_template:
            raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template for conversational prompts")
        if (chat or not isinstance(p, str)) and tokenizer.chat_template:
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
            out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
        else:
            out.append(tokenizer(p)["input_ids"])
    return out
