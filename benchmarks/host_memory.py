"""GRPO learner steps with glibc's default malloc vs freed memory kept (train/host_memory.py).

    python benchmarks/host_memory.py [--policy smollm2-135m-instruct] [--tokens 32] [--rounds 2] [--steps 3]

The learner of benchmarks/profile_grpo_learner.py (SmolLM2-135M-Instruct, 4 prompts x G = 4, beta
0.04, fp32, one micro-batch of 16). Each setting runs in its own process (switching it inside one
process would hand the kept heap back at the switch), `--rounds` times, alternating, so both see the
machine in the same minutes: one warm-up step, then `--steps` timed ones. Prints each step's wall
time, the kernel (system) time and minor page faults it took, and the ratio of the means. The
learner is built with the setting on (its default) and the "system" child switches it off after:
its heap starts pre-grown by the model load, which favours the defaults, so the ratio is a floor.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from profile_grpo_learner import build

from train.host_memory import keep_freed_memory


def timed_step(learner, batch) -> tuple[float, float, int]:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    learner.train_step(batch)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return seconds, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def child(args) -> None:
    learner, batch = build(args.policy, args.tokens)
    keep_freed_memory(args.child == "kept")
    learner.train_step(batch)  # warm-up
    print(json.dumps([timed_step(learner, batch) for _ in range(args.steps)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per completion")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["system", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not keep_freed_memory(True):
        raise SystemExit("benchmarks/host_memory.py: the C library is not glibc; nothing to compare")
    runs: dict[str, list] = {"system": [], "kept": []}
    for _ in range(args.rounds):
        for setting in runs:
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--policy", args.policy, "--tokens",
                                  str(args.tokens), "--steps", str(args.steps)], check=True, capture_output=True,
                                 text=True).stdout
            runs[setting] += json.loads(out.strip().splitlines()[-1])
    print(f"{args.policy}: learner step, 16 rows x {args.tokens} new tokens, {args.rounds} processes each")
    for setting, label in (("system", "glibc defaults   "), ("kept", "freed memory kept")):
        steps = ", ".join(f"{s:.2f} s (sys {k:.1f}, {f // 1000}k faults)" for s, k, f in runs[setting])
        print(f"{label}: mean {statistics.mean(s for s, _, _ in runs[setting]):.2f} s | {steps}")
    ratio = statistics.mean(s for s, _, _ in runs["system"]) / statistics.mean(s for s, _, _ in runs["kept"])
    print(f"ratio: kept is {ratio:.2f}x the speed of glibc's defaults")


if __name__ == "__main__":
    main()
