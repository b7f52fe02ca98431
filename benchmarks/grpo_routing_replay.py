"""GRPO on a real pretrained MoE + MLA policy with rollout routing replay (R3) on and off.

    deepalign policy convert recipes/smollm2/convert.yaml      # once: runs/smollm2/deepseek_v2
    python benchmarks/grpo_routing_replay.py [--recipe recipes/smollm2/grpo_moe_arith.yaml] [--steps 20]

Runs `deepalign grpo RECIPE` twice, in its own process each, same seeds and data, the only
difference `algorithm.routing_replay`: `rollout` (the learner routes every completion token to
the experts the engine chose) and `off` (the learner routes afresh). Both run with
`rollout.parity_max_kl=1.0`, so the engine-learner parity gate before step 1 lets the run without
replay start. Engine and learner compute differently (the recipe's rollout.dtype; the engine's
absorbed-MLA decode and packed kernels), so they disagree on some routing decisions: the mismatch
R3 removes. Prints, per run: held-out
greedy accuracy before and after (200 two-digit problems never trained on), the engine/learner
top-k agreement over MoE layers (first step, mean, min), the mismatch KL(engine || learner) per
token (mean, max), the truncated-IS weight and the share of tokens the mismatch correction left
out, the training reward of the first and last five steps,
and whether the run collapsed: held-out accuracy falling more than 0.05 below its start, the last
five steps' training reward more than 0.1 below the first five's, or a skipped (non-finite) update.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(recipe: str, steps: int, out: Path, replay: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "deepalign.cli", "grpo", recipe, f"algorithm.routing_replay={replay}",
           f"train.steps={steps}", f"train.output_dir={out}", "log.tensorboard=false", "rollout.parity_max_kl=1.0",
           *extra]
    start = time.perf_counter()
    if (out / "eval.json").exists():  # a finished run kept by --keep: read it again
        print(f"{out}: finished before, read from its files")
        return _read(out, None)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "DEEPALIGN_PLAIN_PROGRESS": "1"})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return _read(out, time.perf_counter() - start)


def _read(out: Path, seconds: float | None) -> dict:
    steps_log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    history = json.loads((out / "eval.json").read_text())
    if seconds is None:  # a kept run: its steps' own times (without start-up and evaluations)
        seconds = sum(m["time/step_s"] for m in steps_log)
    return {"steps": steps_log, "start": history["start"], "end": history["end"], "seconds": seconds}


def summary(r: dict) -> dict:
    s = r["steps"]

    def col(key):
        return [m[key] for m in s if key in m]

    agreement, kl, reward = col("routing/agreement"), col("mismatch/kl"), col("reward/mean")
    first, last = sum(reward[:5]) / len(reward[:5]), sum(reward[-5:]) / len(reward[-5:])
    start, end = r["start"]["eval/math_accuracy"], r["end"]["eval/math_accuracy"]
    skipped = sum(m.get("train/skipped_updates", 0) for m in s)
    collapsed = end < start - 0.05 or last < first - 0.1 or skipped > 0
    return {"acc_start": start, "acc_end": end, "agree_first": agreement[0] if agreement else float("nan"),
            "agree_mean": sum(agreement) / len(agreement) if agreement else float("nan"),
            "agree_min": min(agreement) if agreement else float("nan"),
            "kl_mean": sum(kl) / len(kl), "kl_max": max(kl), "masked": sum(col("mismatch/masked_fraction")) / len(s),
            "is_weight": sum(col("train/is_weight_mean")) / len(s),
            "reward_first5": first, "reward_last5": last, "skipped": skipped, "collapsed": collapsed,
            "s_per_step": sum(col("time/step_s")) / len(s), "minutes": r["seconds"] / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/smollm2/grpo_moe_arith.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--keep", help="keep both runs under this folder (default: a temporary one); a run "
                                       "finished there before is read, not run again")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="passed to both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        results = {mode: summary(run(args.recipe, args.steps, root / f"replay_{mode}", mode, args.overrides))
                   for mode in ("rollout", "off")}
    print(f"{args.recipe}, {args.steps} steps, same seeds; only algorithm.routing_replay differs")
    print(f"{'replay':<8} {'held-out acc.':>15} {'agreement 1st/mean/min':>24} {'mismatch KL mean/max':>22} "
          f"{'IS w':>6} {'masked':>7} {'reward 1-5 -> last 5':>21} {'collapsed':>9} {'s/step':>7}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['acc_start']:>6.3f} -> {r['acc_end']:.3f} "
              f"{r['agree_first']:>8.4f}/{r['agree_mean']:.4f}/{r['agree_min']:.4f} "
              f"{r['kl_mean']:>11.2e}/{r['kl_max']:.2e} {r['is_weight']:>6.3f} {r['masked']:>7.4f} "
              f"{r['reward_first5']:>10.3f} -> {r['reward_last5']:.3f} {('yes' if r['collapsed'] else 'no'):>9} "
              f"{r['s_per_step']:>7.1f}")
    on, off = results["rollout"], results["off"]
    print(f"mismatch KL off / on: {off['kl_mean'] / max(on['kl_mean'], 1e-30):.1f}x; held-out gain on "
          f"{on['acc_end'] - on['acc_start']:+.3f}, off {off['acc_end'] - off['acc_start']:+.3f}")


if __name__ == "__main__":
    main()
