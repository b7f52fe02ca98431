"""Built-in synthetic tasks for demos and tests (no downloads).

`arithmetic_problem(rng)`: "What is 47 + 385?" with its answer; `arithmetic_chat(rng)`: the same
as a chat with a short worked answer in a fixed format ("47 + 385 = 432"), the demo SFT task
and the start of the GRPO demo. `word_problem(rng)`: a templated word problem ("Ana has 30
coins and gets 37 more. ...") with its answer: addition, subtraction or multiplication said in
words, the GRPO demo's stage-1 task and the shipped math evaluation set.
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


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
_ITEMS = ["apples", "marbles", "stamps", "books", "shells", "coins", "pencils", "stickers"]


def word_problem(rng: random.Random) -> dict:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    kind = rng.randrange(3)
    if kind == 0:
        return {"prompt": f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
                "answer": str(a + b)}
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return {"prompt": f"{name} had {a} {item} and gave {b} away. How many {item} are left?", "answer": str(a - b)}
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return {"prompt": f"{name} fills {a} boxes with {b} {item} each. How many {item} is that in total?",
            "answer": str(a * b)}
