"""Peak memory and seconds per GRPO step: LoRA against full fine-tuning, same recipe, same machine.

    python benchmarks/grpo_lora_vs_full.py [--recipe recipes/smollm2/grpo_lora.yaml] [--steps 4]

Each run is `deepalign grpo RECIPE` in its own process with everything in that process
(`ray.enabled false`, so the learner, its reference and the hybrid engine are all counted in
the process's peak RSS, read with os.wait4): once as the recipe says (LoRA) and once with
`lora.enabled=false` and the full fine-tuning learning rate (a separate reference copy, AdamW
state for every weight). s/step is the mean `time/step_s` of metrics.jsonl without step 1
(warm-up). Prints both and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(recipe: str, steps: int, out: Path, overrides: list[str]) -> tuple[float, float]:
    """(peak RSS in GiB, mean s/step after the first) of one run."""
    cmd = [sys.executable, "-m", "deepalign.cli", "grpo", recipe, "ray.enabled=false", f"train.steps={steps}",
           f"train.output_dir={out}", "train.eval_every=0", "data.eval_prompts=8", "log.tensorboard=false", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    steps_s = [json.loads(line)["time/step_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return usage.ru_maxrss / 2**20, sum(steps_s[1:]) / max(len(steps_s) - 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/smollm2/grpo_lora.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--full-lr", default="1.0e-5", help="the learning rate of the full fine-tuning run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lora = run(args.recipe, args.steps, Path(tmp) / "lora", [])
        full = run(args.recipe, args.steps, Path(tmp) / "full", ["lora.enabled=false", f"optim.lr={args.full_lr}"])
    print(f"{args.recipe}, {args.steps} steps (s/step over steps 2-{args.steps}), {os.cpu_count()} cores")
    print(f"  full fine-tuning: peak RSS {full[0]:6.2f} GiB, {full[1]:6.2f} s/step")
    print(f"  LoRA:             peak RSS {lora[0]:6.2f} GiB, {lora[1]:6.2f} s/step")
    print(f"  LoRA / full:      memory {lora[0] / full[0]:.2f}x ({full[0] - lora[0]:+.2f} GiB saved), "
          f"time {lora[1] / full[1]:.2f}x")


if __name__ == "__main__":
    main()
