"""Built-in synthetic tasks for demos and tests (no downloads).

`arithmetic_problem(rng)`: "What is 47 + 385?" with its answer; `arithmetic_chat(rng)`: the same
as a chat with a short worked answer in a fixed format ("47 + 385 = 432"), the demo SFT task
and the start of the GRPO demo.
"""

from __future__ import annotations

import random


def arithmetic_problem(rng: random.Random, max_digits: int = 3) -> tuple[str, str]:
    a = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    b = rng.randint(0, 10 ** rng.randint(1, max_digits) - 1)
    if rng.random() < 0.5:
        return f"{a} + {b}", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", str(a - b)


def arithmetic_chat(rng: random.Random, max_digits: int = 3) -> list[dict[str, str]]:
    question, answer = arithmetic_problem(rng, max_digits)
    return [
        {"role": "user", "content": f"What is {question}?"},
        {"role": "assistant", "content": f"{question} = {answer}"},
    ]


def arithmetic_chats(n: int, seed: int = 0, max_digits: int = 3) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [arithmetic_chat(rng, max_digits) for _ in range(n)]
