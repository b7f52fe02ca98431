"""Rendering chats with the policy's chat template, with assistant-only loss masks.

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


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of assistant turns."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    text = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], True)) if i else 0
        end_text = _render(tokenizer, messages[: i + 1], False)
        if not text.startswith(end_text):
            raise TemplateError("chat template does not render conversations incrementally")
        spans.append((start, len(end_text.rstrip())))  # the turn's trailing newline is template, not answer
    return text, spans


def render_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of the whole chat and the assistant-only loss mask (True = counts in the loss).

    A token is a target when its first character lies inside an assistant span.
    """
    text, spans = assistant_spans(tokenizer, messages)
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None:  # a fast tokenizer: call the Rust encoder directly (no Python per token)
        enc = backend.encode(text, add_special_tokens=False)
        ids, offsets = enc.ids, enc.offsets
    else:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))
    mask = np.zeros(len(ids), dtype=bool)
    for begin, end in spans:
        mask |= (starts >= begin) & (starts < end)
    return list(ids), mask.tolist()
