"""Prompt sets for GRPO: built-in tasks (no downloads) and JSONL files.

A `PromptRow` is the prompt text plus the columns reward functions read (`answer` for
math_accuracy, `tests` / `entry_point` for code_tests, `category` for refusal). Built-in sets
are seeded; the eval split is drawn from a different seed and made disjoint from training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from data_tools.synthetic import BENIGN, HARMFUL, HELD_OUT_SEED, TOPICS, arithmetic_problem, word_problem
from train.recipe import RecipeError

BUILTINS = ("builtin:arithmetic", "builtin:word", "builtin:code", "builtin:chat")


@dataclass
class PromptRow:
    prompt: str
    columns: dict = field(default_factory=dict)


def _arithmetic(rng: random.Random, max_digits: int) -> PromptRow:
    question, answer = arithmetic_problem(rng, max_digits)
    return PromptRow(f"What is {question}?", {"answer": answer})


_CODE_TASKS = [
    ("add", "a, b", "the sum of a and b", "assert add(2, 3) == 5\nassert add(-1, 1) == 0"),
    ("double", "x", "x times two", "assert double(4) == 8\nassert double(0) == 0"),
    ("square", "x", "x squared", "assert square(3) == 9\nassert square(-2) == 4"),
    ("negate", "x", "minus x", "assert negate(5) == -5\nassert negate(-3) == 3"),
    ("is_even", "n", "True when n is even", "assert is_even(4)\nassert not is_even(7)"),
    ("maximum", "a, b", "the larger of a and b", "assert maximum(2, 9) == 9\nassert maximum(5, 1) == 5"),
]


def _code(rng: random.Random) -> PromptRow:
    name, args, what, tests = rng.choice(_CODE_TASKS)
    return PromptRow(f"Write a Python function {name}({args}) that returns {what}.",
                     {"tests": tests, "entry_point": name})


def _chat(rng: random.Random, max_digits: int) -> PromptRow:
    """Stage-2 prompts in the built-in reward models' domains (rewards/preferences.py), plus
    arithmetic, whose accuracy shows any alignment tax."""
    kind = rng.random()
    if kind < 0.3:
        row = _arithmetic(rng, max_digits)
        row.columns["category"] = "benign"
        return row
    if kind < 0.55:
        return PromptRow(f"Tell me something about {rng.choice(TOPICS)}.", {"category": "benign"})
    harmful = kind > 0.775
    task = rng.choice(HARMFUL if harmful else BENIGN)
    return PromptRow(f"How do I {task}?", {"category": "harmful" if harmful else "benign"})


def builtin_prompts(source: str, n: int, seed: int, max_digits: int = 3) -> list[PromptRow]:
    rng = random.Random(seed)
    if source == "builtin:arithmetic":
        return [_arithmetic(rng, max_digits) for _ in range(n)]
    if source == "builtin:word":
        return [PromptRow(row["prompt"], {"answer": row["answer"]}) for row in (word_problem(rng) for _ in range(n))]
    if source == "builtin:code":
        return [_code(rng) for _ in range(n)]
    if source == "builtin:chat":
        return [_chat(rng, max_digits) for _ in range(n)]
    raise RecipeError(f"data.source: unknown built-in {source!r}; built-ins: {', '.join(BUILTINS)}")


def load_prompts(source: str, n: int, eval_n: int, seed: int,
                 max_digits: int = 3) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, eval) prompt rows; eval prompts never appear in train."""
    if source.startswith("builtin:"):
        evals = builtin_prompts(source, eval_n, seed + HELD_OUT_SEED, max_digits)
        held_out = {r.prompt for r in evals}
        train = [r for r in builtin_prompts(source, n + eval_n, seed, max_digits) if r.prompt not in held_out][:n]
        return train, evals
    from data_tools.readers import read_records
    from data_tools.schema import parse_prompt

    records = read_records(source, parse_prompt)
    rows = []
    for _, rec in records:
        columns = {k: v for k, v in vars(rec).items() if v is not None and k not in ("prompt", "id", "source")}
        rows.append(PromptRow(rec.prompt, columns))
    if len(rows) <= eval_n:
        raise RecipeError(f"data.source: {source} has {len(rows)} prompts; need more than eval_prompts={eval_n}")
    random.Random(seed).shuffle(rows)
    return rows[eval_n : eval_n + n], rows[:eval_n]
