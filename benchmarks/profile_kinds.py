"""Self CPU time of a torch profiler run, grouped by kind of op: shared by this folder's profile_*
scripts, each of which names its own kinds as op-name fragments (first match wins, the rest is
"other")."""

from __future__ import annotations


def kind_of(name: str, kinds: dict[str, tuple[str, ...]]) -> str:
    return next((k for k, fragments in kinds.items() if any(f in name for f in fragments)), "other")


def seconds_by_kind(events, kinds: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """{kind: self CPU seconds} over the profiler's `key_averages()`, costliest kind first."""
    seconds: dict[str, float] = {}
    for e in events:
        k = kind_of(e.key, kinds)
        seconds[k] = seconds.get(k, 0.0) + e.self_cpu_time_total / 1e6
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def shares_line(seconds: dict[str, float]) -> str:
    """'self CPU time by kind: matmul 8.35 s (69%), other 2.01 s (17%), ...'"""
    total = sum(seconds.values()) or 1.0
    return "self CPU time by kind: " + ", ".join(f"{k} {s:.2f} s ({100 * s / total:.0f}%)" for k, s in seconds.items())
