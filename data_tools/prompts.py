"""Prompt sets for GRPO: built-in tasks (no downloads) and JSONL / Parquet / saved-datasets files.

A `PromptRow` is the prompt (a string or, in TRL's conversational format, a list of messages)
plus every other column of its row, which reach the reward functions under their own names
(`answer` for math_accuracy, `tests` / `entry_point` for code_tests, `category` for refusal, and
any column a user's reward reads). Built-in sets are seeded; the eval split is drawn from a
different seed and made disjoint from training (builtin:chat's few chat templates are split in
two halves, so that both splits hold harmful, benign and arithmetic prompts). A file's held-out
rows come from a separate `data.eval_source` or are cut from the shuffled file.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from data_tools.synthetic import BENIGN, HARMFUL, HELD_OUT_SEED, TOPICS, arithmetic_problem, word_problem
from train.recipe import RecipeError

BUILTINS = ("builtin:arithmetic", "builtin:word", "builtin:code", "builtin:functions", "builtin:functions2",
            "builtin:chat")


@dataclass
class PromptRow:
    """prompt: a string, or a list of messages (conversational); columns: the row's other columns."""

    prompt: str | list[dict[str, str]]
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


# builtin:functions: one-line integer functions with a constant k (1..20), so the held-out split
# holds (function, k) pairs never trained on; tests probe x in TEST_XS and at k and k + 1 (where a
# program off by one in k fails)
_FUNCTIONS = [
    ("add_{k}", "x plus {k}", lambda x, k: x + k),
    ("subtract_{k}", "x minus {k}", lambda x, k: x - k),
    ("times_{k}", "x times {k}", lambda x, k: x * k),
    ("mod_{k}", "the remainder of x divided by {k}", lambda x, k: x % k),
    ("above_{k}", "True when x is greater than {k}, else False", lambda x, k: x > k),
]
TEST_XS = (0, 7, -3, 25)


def _function(rng: random.Random) -> PromptRow:
    name, what, fn = rng.choice(_FUNCTIONS)
    k = rng.randint(1, 20)
    name, what = name.format(k=k), what.format(k=k)
    tests = "\n".join(f"assert {name}({x}) == {fn(x, k)!r}" for x in (*TEST_XS, k, k + 1))
    return PromptRow(f"Write a Python function {name}(x) that returns {what}.", {"tests": tests, "entry_point": name})


# builtin:functions2: harder shapes with two constants a (2..9) and b (1..20), 1,440 distinct; SmolLM2's
# greedy answer passes about a fifth of them (benchmarks/RESULTS.md), so compiler feedback has room
_FUNCTIONS2 = [
    ("affine_{a}_{b}", "x times {a} plus {b}", lambda x, a, b: x * a + b),
    ("clip_{a}_{b}", "x limited to the range from -{a} to {b} (smaller values become -{a}, larger ones {b})",
     lambda x, a, b: max(-a, min(b, x))),
    ("digits_{a}_{b}", "the sum of the decimal digits of abs(x), times {a}, plus {b}",
     lambda x, a, b: sum(map(int, str(abs(x)))) * a + b),
    ("multiples_{a}_{b}", "how many of the numbers 1, 2, ..., x are divisible by {a}, plus {b} (just {b} when x < 1)",
     lambda x, a, b: max(x, 0) // a + b),
    ("parity_{a}_{b}", "{a} when x is even, else x plus {b}", lambda x, a, b: a if x % 2 == 0 else x + b),
]
TEST_XS2 = (0, 7, -3, 25, 123)


def _function2(rng: random.Random) -> PromptRow:
    name, what, fn = rng.choice(_FUNCTIONS2)
    a, b = rng.randint(2, 9), rng.randint(1, 20)
    name, what = name.format(a=a, b=b), what.format(a=a, b=b)
    xs = (*TEST_XS2, -a - 1, b + 1, a)  # the edges where a wrong constant or boundary shows
    tests = "\n".join(f"assert {name}({x}) == {fn(x, a, b)!r}" for x in dict.fromkeys(xs))
    return PromptRow(f"Write a Python function {name}(x) that returns {what}.", {"tests": tests, "entry_point": name})


def _chat(rng: random.Random, max_digits: int, held_out: bool) -> PromptRow:
    """Stage-2 prompts in the built-in reward models' domains (rewards/preferences.py): "Tell me
    something about X" (category helpful, the helpful RM's) and "How do I X?" (benign or harmful,
    the safety RM's), plus arithmetic (category math, with its answer), whose accuracy shows any
    alignment tax and which a recipe may reward by ground truth (RewardSpec.categories). The chat
    templates are few (20 topics, 8 benign and 8 harmful tasks), so the split is by template:
    training draws every other one, the held-out set the rest; both see every category."""
    kind = rng.random()
    if kind < 0.3:
        row = _arithmetic(rng, max_digits)
        row.columns["category"] = "math"
        return row
    half = slice(int(held_out), None, 2)
    if kind < 0.55:
        return PromptRow(f"Tell me something about {rng.choice(TOPICS[half])}.", {"category": "helpful"})
    harmful = kind > 0.775
    task = rng.choice((HARMFUL if harmful else BENIGN)[half])
    return PromptRow(f"How do I {task}?", {"category": "harmful" if harmful else "benign"})


def builtin_prompts(source: str, n: int, seed: int, max_digits: int = 3, held_out: bool = False) -> list[PromptRow]:
    """n rows of a built-in set; held_out picks builtin:chat's held-out templates (see _chat)."""
    rng = random.Random(seed)
    if source == "builtin:arithmetic":
        return [_arithmetic(rng, max_digits) for _ in range(n)]
    if source == "builtin:word":
        return [PromptRow(row["prompt"], {"answer": row["answer"]}) for row in (word_problem(rng) for _ in range(n))]
    if source == "builtin:code":
        return [_code(rng) for _ in range(n)]
    if source == "builtin:functions":
        return [_function(rng) for _ in range(n)]
    if source == "builtin:functions2":
        return [_function2(rng) for _ in range(n)]
    if source == "builtin:chat":
        return [_chat(rng, max_digits, held_out) for _ in range(n)]
    raise RecipeError(f"data.source: unknown built-in {source!r}; built-ins: {', '.join(BUILTINS)}")


def read_prompt_file(source: str, columns: dict[str, str] | None = None) -> list[PromptRow]:
    """Every row of a JSONL / Parquet / saved-datasets prompt file (data_tools/schema.py formats)."""
    from data_tools.readers import read_records
    from data_tools.schema import parse_prompt

    parse = functools.partial(parse_prompt, columns=columns or None)
    return [PromptRow(rec.prompt, rec.columns) for _, rec in read_records(source, parse)]


def first_prompt_row(source: str, columns: dict[str, str] | None = None, seed: int = 0,
                     max_digits: int = 3) -> PromptRow:
    """The source's first row, read without loading the rest (the rewards' pre-flight call)."""
    if source.startswith("builtin:"):
        return builtin_prompts(source, 1, seed, max_digits)[0]
    from data_tools.readers import read_records
    from data_tools.schema import parse_prompt

    for _, rec in read_records(source, functools.partial(parse_prompt, columns=columns or None)):
        return PromptRow(rec.prompt, rec.columns)
    raise RecipeError(f"data.source: {source} has no rows")


def load_prompts(source: str, n: int, eval_n: int, seed: int, max_digits: int = 3, eval_source: str | None = None,
                 columns: dict[str, str] | None = None) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, eval) prompt rows; eval prompts never appear in train. With `eval_source` the held-out
    rows are that file's (its first eval_n); otherwise eval_n rows of a shuffled file are held out,
    or a fifth of a file too small for that (saying so)."""
    if source.startswith("builtin:"):
        evals = builtin_prompts(source, eval_n, seed + HELD_OUT_SEED, max_digits, held_out=True)
        held_out = {_key(r.prompt) for r in evals}
        train = [r for r in builtin_prompts(source, n + eval_n, seed, max_digits)
                 if _key(r.prompt) not in held_out][:n]
    else:
        train = read_prompt_file(source, columns)
        random.Random(seed).shuffle(train)
    if eval_source:
        evals = (builtin_prompts(eval_source, eval_n, seed + HELD_OUT_SEED, max_digits, held_out=True)
                 if eval_source.startswith("builtin:") else read_prompt_file(eval_source, columns)[:eval_n])
        held_out = {_key(r.prompt) for r in evals}
        train = [r for r in train if _key(r.prompt) not in held_out]
        if not train:
            raise RecipeError(f"data.source: every prompt of {source} is also in data.eval_source {eval_source}")
        return train[:n], evals
    if source.startswith("builtin:"):
        return train, evals
    if len(train) < 2:
        raise RecipeError(f"data.source: {source} has {len(train)} prompt(s); GRPO needs at least 2 "
                          "(one to train on, one held out), or a separate data.eval_source")
    if len(train) <= eval_n:
        cut = max(1, len(train) // 5)
        print(f"data.source: {source} has {len(train)} prompts, not more than data.eval_prompts={eval_n}: holding "
              f"out {cut} of them (set data.eval_source for a separate held-out file)")
        eval_n = cut
    return train[eval_n : eval_n + n], train[:eval_n]


def _key(prompt) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)
