"""Steps per hour: synchronous GRPO against off-policy GRPO (`algorithm.max_staleness: k`, with and
without partial rollouts), same recipe, same machine, one run each.

    python benchmarks/grpo_async.py [--recipe recipes/demo/grpo_stage1.yaml] [--steps 12]
        [--configs 0,1,2p] [key=value ...]

Runs `deepalign grpo RECIPE` once per config in its own process, with `ray.placement split`
(rollout workers and learners on their own CPUs, so the rollout of step s + 1 can overlap the
learner's step s); a config is max_staleness k, with a `p` for `algorithm.partial_rollouts`; the
first (0 = synchronous) is the baseline. The first two steps are warm-up and left out. Prints per
run: seconds per step (mean of the rest), steps per hour, the mean rollout and learner seconds
per step, and for async runs the time the learner waited for its batch, the share of the
sampling hidden behind the learner and the mean token staleness; then each ratio to the baseline.
Extra key=value overrides go to every run (e.g. policy.name=tiny for a self-contained run).
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


def run(recipe: str, steps: int, out: Path, config: str, extra: list[str]) -> dict[str, float]:
    staleness, partial = int(config.rstrip("p")), config.endswith("p")
    cmd = [sys.executable, "-m", "deepalign.cli", "grpo", recipe, f"algorithm.max_staleness={staleness}",
           f"algorithm.partial_rollouts={str(partial).lower()}",
           f"train.steps={steps}", f"train.output_dir={out}", "log.tensorboard=false", "ray.enabled=true",
           "ray.placement=split", "train.eval_every=0", *extra]
    subprocess.run(cmd, cwd=REPO, check=True)
    steps_logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [s for s in steps_logged if "time/step_s" in s][WARMUP:]
    mean = lambda key: sum(s.get(key, 0.0) for s in timed) / len(timed)  # noqa: E731
    return {"step_s": mean("time/step_s"), "rollout_s": mean("time/rollout_s"), "learner_s": mean("time/learner_s"),
            "wait_s": mean("async/wait_s"), "overlap": mean("async/overlap"),
            "staleness": mean("async/staleness_mean"), "partial": mean("async/partial_samples"), "steps": len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/demo/grpo_stage1.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--configs", default="0,1,2p", help="max_staleness values, p = partial rollouts")
    args, extra = parser.parse_known_args()
    configs = args.configs.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        results = {c: run(args.recipe, args.steps, Path(tmp) / f"staleness{c}", c, extra) for c in configs}
    for c, r in results.items():
        name = f"max_staleness {c.rstrip('p')}" + (" + partial rollouts" if c.endswith("p") else "")
        line = (f"{name}: {r['step_s']:.2f} s/step ({3600 / r['step_s']:.0f} steps/h over {r['steps']} "
                f"steps), rollout {r['rollout_s']:.2f} s, learner {r['learner_s']:.2f} s")
        if c != "0":
            line += (f", waited {r['wait_s']:.2f} s for its batch, {r['overlap']:.0%} of sampling hidden, "
                     f"token staleness {r['staleness']:.2f}, {r['partial']:.0%} of samples span versions")
        print(line)
    base = results[configs[0]]["step_s"]
    for c in configs[1:]:
        print(f"steps per hour, max_staleness {c} / {configs[0]}: {base / results[c]['step_s']:.2f}x")


if __name__ == "__main__":
    main()
