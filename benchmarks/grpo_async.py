"""Steps per hour: synchronous GRPO against one-step off-policy GRPO (`algorithm.max_staleness: 1`),
same recipe, same machine, one run each.

    python benchmarks/grpo_async.py [--recipe recipes/demo/grpo_stage1.yaml] [--steps 12] [key=value ...]

Runs `deepalign grpo RECIPE` twice in its own process each, with `ray.placement split` (rollout
workers and learners on their own CPUs, so the rollout of step s + 1 can overlap the learner's
step s) and the only difference `algorithm.max_staleness` 0 or 1. The first two steps are
warm-up and left out. Prints per run: seconds per step (mean of the rest), steps per hour, the
mean rollout and learner seconds per step, and with staleness 1 the time the learner waited for
the next step's rollout and the share of the rollout hidden behind the learner; then the ratio.
Extra key=value overrides go to both runs (e.g. policy.name=tiny for a self-contained run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 2


def run(recipe: str, steps: int, out: Path, staleness: int, extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "deepalign.cli", "grpo", recipe, f"algorithm.max_staleness={staleness}",
           f"train.steps={steps}", f"train.output_dir={out}", "log.tensorboard=false", "ray.enabled=true",
           "ray.placement=split", "train.eval_every=0", *extra]
    subprocess.run(cmd, cwd=REPO, check=True)
    steps_logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [s for s in steps_logged if "time/step_s" in s][WARMUP:]
    mean = lambda key: sum(s.get(key, 0.0) for s in timed) / len(timed)  # noqa: E731
    return {"step_s": mean("time/step_s"), "rollout_s": mean("time/rollout_s"), "learner_s": mean("time/learner_s"),
            "wait_s": mean("async/wait_s"), "overlap": mean("async/overlap"), "steps": len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/demo/grpo_stage1.yaml")
    parser.add_argument("--steps", type=int, default=12)
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: run(args.recipe, args.steps, Path(tmp) / f"staleness{s}", s, extra) for s in (0, 1)}
    for s, r in results.items():
        line = (f"max_staleness {s}: {r['step_s']:.2f} s/step ({3600 / r['step_s']:.0f} steps/h over {r['steps']} "
                f"steps), rollout {r['rollout_s']:.2f} s, learner {r['learner_s']:.2f} s")
        if s:
            line += f", learner waited {r['wait_s']:.2f} s for the next rollout, {r['overlap']:.0%} of it hidden"
        print(line)
    print(f"steps per hour, max_staleness 1 / synchronous: {results[0]['step_s'] / results[1]['step_s']:.2f}x")


if __name__ == "__main__":
    main()
