"""The evaluation suites. Each takes a generator (prompts, n -> n completions per prompt) and
returns a `SuiteResult`: a headline score, named metrics and per-item records (prompt,
completions, per-item score), which the report uses for intervals and side-by-side samples.

- math: mean `math_accuracy` over samples (greedy by default) on a held-out set.
- code: HumanEval pass@1 and pass@k (unbiased estimator over n samples) through the
  `code_tests` sandbox; a program that times out or crashes is a counted failure.
- preference: the reward model's score per completion (the win rate of B over A is computed
  from the paired scores when comparing).
- safety: refusal rate on harmful requests and over-refusal on benign look-alikes
  (headline: the mean of the two rates of correct behaviour).
- reward: the user's own reward function (`--reward module:fn` or `file.py:fn`, TRL's signature) on
  the rows of `--reward-data` (any prompt file; every column reaches the reward, conversational
  prompts get conversational completions, as in GRPO); headline: the mean over the samples it
  applies to (None = does not apply).
- stats: response length (words), distinct-1 and distinct-2 (KL of B from A needs both models
  and is computed by the comparison, evals/runner.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from evals.metrics import distinct_n, mean_interval, pass_at_k
from rewards.math_accuracy import math_accuracy
from rewards.rules import is_refusal
from rewards.text import completions_for

Generator = Callable[[list[str], int], list[list[str]]]
SUITES = ("math", "code", "preference", "safety", "stats", "reward")


@dataclass
class SuiteResult:
    name: str
    score: float
    metrics: dict[str, float]
    items: list[dict] = field(default_factory=list)  # {"prompt", "completions", "score", ...}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SuiteResult:
        return cls(**data)


def _result(name: str, scores: list[float], metrics: dict, items: list[dict], start: float) -> SuiteResult:
    mean, low, high = mean_interval(scores)
    return SuiteResult(name, mean, {**metrics, "score_low": low, "score_high": high, "items": len(items)},
                       items, time.perf_counter() - start)


def run_math(generate: Generator, rows: list[dict], samples: int = 1) -> SuiteResult:
    start = time.perf_counter()
    outs = generate([r["prompt"] for r in rows], samples)
    items, scores = [], []
    for row, completions in zip(rows, outs, strict=True):
        n = len(completions)
        correct = math_accuracy([row["prompt"]] * n, completions, answer=[row["answer"]] * n)
        score = sum(correct) / len(correct)
        scores.append(score)
        items.append({"prompt": row["prompt"], "answer": row["answer"], "completions": completions, "score": score})
    return _result("math", scores, {"accuracy": sum(scores) / len(scores)}, items, start)


def humaneval_chat_prompt(problem: dict) -> str:
    return f"Complete this Python function. Reply with the whole function in a code block.\n\n{problem['prompt']}"


def run_code(generate: Generator, problems: list[dict], samples: int = 1, ks: tuple[int, ...] = (1,),
             pool=None) -> SuiteResult:
    from rewards.code_tests import sandbox_pool, score_programs

    start = time.perf_counter()
    outs = generate([humaneval_chat_prompt(p) for p in problems], samples)
    prompts, completions, tests, entry_points = [], [], [], []
    for problem, comps in zip(problems, outs, strict=True):
        for c in comps:
            prompts.append(problem["prompt"])
            completions.append(c)
            tests.append(problem["test"])  # the harness calls check(<entry point>)
            entry_points.append(problem["entry_point"])
    results = score_programs(prompts, completions, tests, entry_points, pool=pool or sandbox_pool())
    items, per_problem, failures = [], [], {}
    for i, (problem, comps) in enumerate(zip(problems, outs, strict=True)):
        mine = results[i * samples : (i + 1) * samples]
        passed = sum(1 for r in mine if r is not None and r.score == 1.0)
        for r in mine:
            if r is not None and r.score < 1.0:
                failures[r.reason.split(":")[0][:40]] = failures.get(r.reason.split(":")[0][:40], 0) + 1
        per_problem.append(pass_at_k(samples, passed, 1))
        items.append({"prompt": problem["task_id"], "completions": comps, "score": per_problem[-1], "passed": passed})
    metrics = {f"pass@{k}": sum(pass_at_k(samples, it["passed"], k) for it in items) / len(items)
               for k in ks if k <= samples}
    metrics.update({f"failures/{reason}": float(n) for reason, n in failures.items()})
    return _result("code", per_problem, metrics, items, start)


def run_preference(generate: Generator, rows: list[dict], reward_model: str | None) -> SuiteResult:
    if not reward_model:
        from evals.data import EvalError

        raise EvalError("suite preference needs --reward-model PATH (a scalar-head reward model checkpoint)")
    from rewards.reward_model import reward_model as rm_score

    start = time.perf_counter()
    outs = generate([r["prompt"] for r in rows], 1)
    completions = [o[0] for o in outs]
    scores = rm_score([r["prompt"] for r in rows], completions, path=reward_model)
    items = [{"prompt": r["prompt"], "completions": [c], "score": s}
             for r, c, s in zip(rows, completions, scores, strict=True)]
    return _result("preference", scores, {"reward_mean": sum(scores) / len(scores)}, items, start)


def run_safety(generate: Generator, rows: list[dict]) -> SuiteResult:
    start = time.perf_counter()
    outs = generate([r["prompt"] for r in rows], 1)
    items, harmful, benign = [], [], []
    for row, comps in zip(rows, outs, strict=True):
        refused = float(is_refusal(comps[0]))
        (harmful if row["category"] == "harmful" else benign).append(refused)
        good = refused if row["category"] == "harmful" else 1.0 - refused
        items.append({"prompt": row["prompt"], "category": row["category"], "completions": comps, "score": good,
                      "refused": refused})
    metrics = {"refusal_rate_harmful": sum(harmful) / max(len(harmful), 1),
               "over_refusal_benign": sum(benign) / max(len(benign), 1)}
    return _result("safety", [it["score"] for it in items], metrics, items, start)


def run_stats(generate: Generator, rows: list[dict]) -> SuiteResult:
    start = time.perf_counter()
    outs = generate([r["prompt"] for r in rows], 1)
    texts = [o[0] for o in outs]
    lengths = [float(len(t.split())) for t in texts]
    items = [{"prompt": r["prompt"], "completions": [t], "score": n}
             for r, t, n in zip(rows, texts, lengths, strict=True)]
    metrics = {"response_words": sum(lengths) / len(lengths), "distinct_1": distinct_n(texts, 1),
               "distinct_2": distinct_n(texts, 2)}
    return _result("stats", lengths, metrics, items, start)


def run_reward(generate: Generator, rows: list[dict], reward: str, samples: int = 1) -> SuiteResult:
    from rewards.api import call_reward, get_reward

    fn = get_reward(reward)
    start = time.perf_counter()
    outs = generate([r["prompt"] for r in rows], samples)
    items, scores = [], []
    for row, comps in zip(rows, outs, strict=True):
        columns = {k: [v] * len(comps) for k, v in row.items() if k != "prompt"}
        completions = completions_for([row["prompt"]] * len(comps), comps)
        values = [v for v in call_reward(fn, [row["prompt"]] * len(comps), completions, columns) if v is not None]
        if not values:
            continue
        scores.append(sum(values) / len(values))
        items.append({"prompt": row["prompt"], "completions": comps, "score": scores[-1]})
    if not items:
        from evals.data import EvalError

        raise EvalError(f"suite reward: {reward} returned None (does not apply) for every row")
    return _result("reward", scores, {"reward_mean": sum(scores) / len(scores)}, items, start)
