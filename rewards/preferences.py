"""Preference data for reward models.

- Built-in demo tasks (no downloads), each with chosen and rejected of the same form so that an
  untrained model is at chance: `builtin:helpful` (the answer about the asked topic preferred to
  the same answer about another topic), `builtin:safety` (refuse harmful requests, help with benign ones),
  `builtin:reasoning` (the correct sum preferred to a wrong one).
- Preferences as DeepSeek-V2 built them (V2 §4): sample several completions per prompt from a
  policy and label them with compiler feedback (`code_tests`: passing = chosen, failing =
  rejected) or ground truth (`math_accuracy`).
Rows: {"prompt", "chosen", "rejected"} (pair-wise) or {"prompt", "completion", "label"} (point-wise).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from data_tools.synthetic import BENIGN, HARMFUL, TOPICS

REFUSALS = ["I can't help with that, it could seriously hurt people.", "I won't help with this request.",
            "Sorry, but I cannot assist with that."]


def _helpful(rng: random.Random) -> dict:
    topic, other = rng.sample(TOPICS, 2)
    prompt = f"Tell me something about {topic}."
    chosen = f"Here is a fact about {topic}: {topic} are fascinating and worth studying."
    rejected = f"Here is a fact about {other}: {other} are fascinating and worth studying."  # same form
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _safety(rng: random.Random) -> dict:
    if rng.random() < 0.5:
        task = rng.choice(HARMFUL)
        return {"prompt": f"How do I {task}?", "chosen": rng.choice(REFUSALS),
                "rejected": f"Sure! To {task}, first gather the materials, then follow these steps."}
    task = rng.choice(BENIGN)
    return {"prompt": f"How do I {task}?", "chosen": f"Sure! To {task}, first gather the materials, then "
            "follow these steps.", "rejected": rng.choice(REFUSALS)}


def _reasoning(rng: random.Random) -> dict:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    wrong = a + b + rng.choice([-2, -1, 1, 2, 10])
    return {"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}", "rejected": f"{a} + {b} = {wrong}"}


BUILTIN_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "helpful": _helpful, "safety": _safety, "reasoning": _reasoning,
}


def builtin_pairs(name: str, n: int, seed: int = 0) -> list[dict]:
    if name not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in preference task {name!r}; choose from {sorted(BUILTIN_TASKS)}")
    rng = random.Random(seed)
    return [BUILTIN_TASKS[name](rng) for _ in range(n)]


def pairs_from_scores(prompt, completions: list[str], scores: list[float | None], max_pairs: int,
                      rng: random.Random) -> list[dict]:
    """Every (passing, failing) combination for one prompt, at most max_pairs of them."""
    good = [c for c, s in zip(completions, scores, strict=True) if s is not None and s >= 1.0]
    bad = [c for c, s in zip(completions, scores, strict=True) if s is not None and s <= 0.0]
    pairs = [(g, b) for g in dict.fromkeys(good) for b in dict.fromkeys(bad)]
    rng.shuffle(pairs)
    return [{"prompt": prompt, "chosen": g, "rejected": b} for g, b in pairs[:max_pairs]]


def build_preferences(rows: list[dict], sample: Callable[[list[str], int], list[list[str]]],
                      score: Callable[[list, list, dict], list[float | None]], samples: int, max_pairs: int,
                      seed: int = 0) -> tuple[list[dict], dict]:
    """Sample `samples` completions per prompt, label them with `score`, pair passing with failing.

    sample(prompts, n) -> n completions per prompt; score(prompts, completions, columns) -> rewards.
    Returns (pairs, stats).
    """
    rng = random.Random(seed)
    prompts = [r["prompt"] for r in rows]
    completions = sample(prompts, samples)
    flat_prompts = [p for p in prompts for _ in range(samples)]
    flat_completions = [c for cs in completions for c in cs]
    columns = {k: [r.get(k) for r in rows for _ in range(samples)]
               for k in ("answer", "tests", "test", "entry_point") if any(k in r for r in rows)}
    scores = score(flat_prompts, flat_completions, columns)
    pairs, stats = [], {"prompts": len(rows), "completions": len(flat_completions), "passing": 0, "failing": 0}
    for i, prompt in enumerate(prompts):
        s = scores[i * samples : (i + 1) * samples]
        stats["passing"] += sum(x is not None and x >= 1.0 for x in s)
        stats["failing"] += sum(x is not None and x <= 0.0 for x in s)
        pairs += pairs_from_scores(prompt, completions[i], s, max_pairs, rng)
    stats["pairs"] = len(pairs)
    return pairs, stats


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
