"""Chat data for converting and healing a policy: the dense model's own replies to built-in prompts.

Owns `teacher_chats`: prompts from the built-in sets (helpful and harmful requests, topics,
arithmetic, word problems, tiny coding tasks), each answered by the dense (teacher) model with
our rollout engine, returned as token id rows (prompt + reply) with the reply's start. The
conversion calibrates on some, the heal distils on others, and the report measures perplexity
on held-out ones (other prompts, drawn from the held-out seed). Nothing is downloaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from data_tools.prompts import builtin_prompts
from data_tools.synthetic import HELD_OUT_SEED

SOURCES = ("builtin:chat", "builtin:word", "builtin:arithmetic", "builtin:code")


@dataclass
class ChatRow:
    ids: list[int]  # prompt + reply tokens
    reply_start: int  # index of the first reply token


def mixed_prompts(n: int, seed: int, held_out: bool = False, exclude: frozenset = frozenset()) -> list:
    """n prompts, cycling over the built-in sources (two-digit arithmetic), none in `exclude`;
    held-out draws use other seeds."""
    base = seed + (HELD_OUT_SEED if held_out else 0)
    per = -(-n // len(SOURCES)) + len(exclude)
    rows = [builtin_prompts(s, per, base + i, max_digits=2) for i, s in enumerate(SOURCES)]
    mixed = [r.prompt for group in zip(*rows, strict=True) for r in group]
    return [p for p in mixed if not (isinstance(p, str) and p in exclude)][:n]


def teacher_chats(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float, seed: int,
                  batch_size: int = 64, progress=None) -> list[ChatRow]:
    """The teacher's sampled reply to each prompt (the engine runs a copy, so `model` is untouched)."""
    from data_tools.chat import encode_prompts
    from rollout.engine import SamplingConfig
    from rollout.local import LocalEngine

    engine = LocalEngine(copy.deepcopy(model), tokenizer)
    ids = encode_prompts(tokenizer, prompts)
    rows: list[ChatRow] = []
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    for i in range(0, len(ids), batch_size):
        out = engine.generate(ids[i : i + batch_size], 1, sampling, seed=seed + i)
        for p, c in zip(out.prompt_ids, out.completion_ids, strict=True):
            rows.append(ChatRow(list(p) + list(c), len(p)))
        if progress is not None:
            progress(len(rows))
    return rows
