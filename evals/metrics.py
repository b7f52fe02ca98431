"""Evaluation statistics as pure functions.

- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  computed as a running product to stay exact for large n.
- `win_rate(a, b)`: B's win rate over A from paired scores (tie = half a win, |diff| <= margin),
  with a normal-approximation 95% interval over the paired outcomes.
- `mean_interval(values)`: mean and a 95% interval (normal approximation, sample std).
- `t_interval(values)`: mean and a 95% Student-t interval, for a handful of values (runs over seeds,
  where the normal approximation is far too narrow: with 3 values t is 4.30, not 1.96).
- `delta_interval(a, b)`: paired difference B - A with its 95% interval (per-item pairs).
- `distinct_n(texts, n)`: unique n-grams / all n-grams over whitespace tokens.
"""

from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn without replacement from n, c correct) passes."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, low, high)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * std / math.sqrt(n)
    return mean, mean - half, mean + half


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the normal 1.96 is within 2%
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean (one value: a point)."""
    n = len(values)
    return mean_interval(values, _T95[n - 2] if 2 <= n <= len(_T95) + 1 else 1.96)


def delta_interval(a: list[float], b: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """B - A over paired items: (delta, low, high)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return mean_interval([y - x for x, y in zip(a, b, strict=True)], z)


def win_rate(a: list[float], b: list[float], margin: float = 0.0, z: float = 1.96) -> dict[str, float]:
    """B against A on paired scores: wins, ties, losses, rate = (wins + ties/2) / n and its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    outcomes = [1.0 if y - x > margin else 0.0 if x - y > margin else 0.5 for x, y in zip(a, b, strict=True)]
    rate, low, high = mean_interval(outcomes, z)
    return {"wins": outcomes.count(1.0), "ties": outcomes.count(0.5), "losses": outcomes.count(0.0),
            "rate": rate, "low": max(0.0, low), "high": min(1.0, high)}


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
