"""Seconds per GRPO step: deepalign vs TRL's GRPOTrainer, same model, prompts and settings.

    python benchmarks/grpo_vs_trl.py [--steps 4] [--warmup 2] [--peer-keeps-freed-memory] [--only "hybrid, fp32"]

SmolLM2-135M-Instruct on CPU, G = 4, 4 prompts per step, 32 new tokens, beta = 0.04, lr 1e-6,
reward math_accuracy on the built-in arithmetic prompts (the same rows for both). TRL's
GRPOTrainer runs in fp32 (its bf16 path on CPU takes minutes per step). Ours runs the full
driver on a local Ray cluster three times:
- "fp32, separate workers": the same precision as TRL; one rollout worker and one learner as Ray
  actors, the weights published to the object store and loaded by the worker every step;
- "hybrid, fp32": the same precision as TRL, the engine in the learner's process
  (`ray.placement: hybrid`, the recipes' CPU setting), so a weight sync is an in-process copy;
- "hybrid, bf16": as above with a bf16 engine copy and bf16 autocast in the learner over fp32
  weights (`train.mixed_precision: bf16`).
The first `--warmup` steps of each run (ours and TRL's alike) are not counted: a CPU process's heap
takes two steps to stop growing (first-touch page faults, benchmarks/profile_grpo_learner.py
--per-step), and a long run lives in the steady state after them. `--only` runs just the named
configurations of ours (labels as printed, ";"-separated). Ours prints its split: rollout, reward,
learner, weight sync. Our workers keep freed host memory for reuse (`train.keep_freed_memory`,
train/host_memory.py); TRL runs with glibc's defaults, as its users get it, unless
`--peer-keeps-freed-memory` gives it the same setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"


def trl_seconds_per_step(rows, steps: int, warmup: int, out: Path) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from policy.load import load_policy
    from rewards.math_accuracy import math_accuracy

    model, tokenizer = load_policy(MODEL)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}], "answer": r.columns["answer"]}
                              for r in rows])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    config = GRPOConfig(output_dir=str(out), per_device_train_batch_size=16, num_generations=4,
                        max_completion_length=32, beta=0.04, learning_rate=1e-6, max_steps=steps + warmup,
                        logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                        temperature=1.0, loss_type="grpo", scale_rewards="group", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[math_accuracy], args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return statistics.mean(times[warmup:])


def ours_seconds_per_step(steps: int, warmup: int, out: Path, hybrid: bool, bf16: bool) -> dict[str, float]:
    from grpo.config import GRPORecipe
    from grpo.driver import run
    from train.recipe import recipe_from_dict

    recipe = recipe_from_dict(GRPORecipe, {
        "policy": {"name": MODEL},
        "data": {"source": "builtin:arithmetic", "num_prompts": 64, "eval_prompts": 4, "max_digits": 2},
        "rewards": [{"name": "math_accuracy"}],
        "algorithm": {"group_size": 4, "prompts_per_step": 4, "loss": {"beta": 0.04}},
        "rollout": {"sampling": {"max_new_tokens": 32}, "dtype": "bfloat16" if bf16 else "float32"},
        "ray": {"enabled": True, "num_cpus": 2, "placement": "hybrid" if hybrid else "colocated"},
        "train": {"output_dir": str(out), "steps": steps + warmup, "micro_batch_size": 16,
                  "mixed_precision": "bf16" if bf16 else "no"},
        "optim": {"lr": 1e-6},
        "log": {"progress": False, "tensorboard": False},
    })
    run(recipe)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][warmup:]
    keys = ["time/step_s", "time/rollout_s", "time/reward_s", "time/learner_s", "time/weight_sync_s"]
    return {k: statistics.mean(x[k] for x in lines) for k in keys}


CONFIGS = (("fp32, separate workers", False, False), ("hybrid, fp32", True, False), ("hybrid, bf16", True, True))


def _configs(only: str) -> list[tuple[str, bool, bool]]:
    """(label, hybrid, bf16) of each configuration to run: all, or those `--only` names."""
    if not only:
        return list(CONFIGS)
    names = [n.strip() for n in only.split(";")]
    unknown = [n for n in names if n not in {c[0] for c in CONFIGS}]
    if unknown:
        valid = "; ".join(repr(c[0]) for c in CONFIGS)
        raise SystemExit(f"--only: unknown configuration {unknown[0]!r}; valid: {valid}")
    return [c for c in CONFIGS if c[0] in names]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps run first and not counted")
    parser.add_argument("--only", default="", help='configurations of ours to run, ";"-separated, e.g. "hybrid, fp32"')
    parser.add_argument("--peer-keeps-freed-memory", action="store_true",
                        help="run TRL with the malloc setting our workers use (train/host_memory.py)")
    args = parser.parse_args()
    import ray

    from data_tools.prompts import load_prompts
    from train.host_memory import keep_freed_memory

    rows, _ = load_prompts("builtin:arithmetic", 64, 4, 0, 2)
    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, hybrid, bf16 in _configs(args.only):
            folder = Path(tmp) / label.replace(", ", "_").replace(" ", "_")
            ours[label] = ours_seconds_per_step(args.steps, args.warmup, folder, hybrid, bf16)
            ray.shutdown()
        keep_freed_memory(args.peer_keeps_freed_memory)  # this process runs TRL; ours ran in Ray's workers
        theirs = trl_seconds_per_step(rows, args.steps, args.warmup, Path(tmp) / "trl")
    print(f"\nSmolLM2-135M-Instruct, G=4, 4 prompts/step, 32 new tokens, beta 0.04, {args.steps} timed steps "
          f"after {args.warmup} warm-up")
    malloc = "freed memory kept, as ours" if args.peer_keeps_freed_memory else "glibc's default malloc"
    print(f"TRL GRPOTrainer (fp32, {malloc}): {theirs:.2f} s/step")
    for label, t in ours.items():
        print(f"deepalign ({label}): {t['time/step_s']:.2f} s/step  [rollout {t['time/rollout_s']:.2f}, "
              f"reward {t['time/reward_s']:.2f}, learner {t['time/learner_s']:.2f}, "
              f"weight sync {t['time/weight_sync_s']:.2f}]  ratio ours/TRL {t['time/step_s'] / theirs:.2f}x")
    print("target: ratio <= 0.4x at equal fp32 precision")


if __name__ == "__main__":
    main()
