"""The RM win rate of one checkpoint over another on `compare`'s built-in preference suite, split
into the topics stage 2's training prompts use (builtin:chat trains on every other topic) and the
held-out ones, for each seed of a `deepalign pipeline ... --seeds N` run. The suite's 20 prompts
are one per topic, so each half has 10 and one prompt moves a half's rate by 0.1.

    python benchmarks/preference_split.py runs/demo [--a sft --b grpo_stage2]

Reads each seed's compare/report.json and the per-item scores in compare/cache (no model runs).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from data_tools.synthetic import TOPICS

HELD_OUT = {f"Tell me something about {t}." for t in TOPICS[1::2]}  # data_tools/prompts.py's _chat split


def win_rate(a: dict[str, float], b: dict[str, float]) -> float:
    outcomes = [1.0 if b[p] > a[p] else 0.5 if b[p] == a[p] else 0.0 for p in a]
    return sum(outcomes) / len(outcomes)


def seed_items(compare: Path) -> dict[str, dict[str, float]]:
    """{stage name: {prompt: RM score}}, matching each cached suite result to its checkpoint by score."""
    report = json.loads((compare / "report.json").read_text())
    items = {}
    for path in glob.glob(str(compare / "cache" / "*" / "preference-*.json")):
        cached = json.loads(Path(path).read_text())
        name = next(k for k, v in report["scores"].items() if abs(v["preference"]["score"] - cached["score"]) < 1e-9)
        items[Path(name).parent.name] = {it["prompt"]: it["score"] for it in cached["items"]}
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--a", default="sft")
    parser.add_argument("--b", default="grpo_stage2")
    args = parser.parse_args()
    print(f"{args.b} over {args.a}: RM win rate on all 20 topics / the 10 trained / the 10 held out")
    for seed in sorted(p for p in Path(args.run).glob("seed*") if p.is_dir()):
        items = seed_items(seed / "compare")
        a, b = items[args.a], items[args.b]
        trained = {p: v for p, v in a.items() if p not in HELD_OUT}
        held = {p: v for p, v in a.items() if p in HELD_OUT}
        print(f"{seed.name}: {win_rate(a, b):.2f} / {win_rate(trained, b):.2f} / {win_rate(held, b):.2f}")


if __name__ == "__main__":
    main()
