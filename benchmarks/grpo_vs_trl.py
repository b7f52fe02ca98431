"""Seconds per GRPO step: deepalign vs TRL's GRPOTrainer, same model, prompts and settings.

    python benchmarks/grpo_vs_trl.py [--steps 5] [--engine-dtype bfloat16]

SmolLM2-135M-Instruct, fp32 learner on CPU, G = 4, 4 prompts per step, 32 new tokens,
beta = 0.04, lr 1e-6, reward math_accuracy on the built-in arithmetic prompts (the same rows,
the same order, for both). TRL runs its own generate; ours runs the full driver on a local Ray
cluster (one rollout worker, one learner, weights synced every step). The first step of each is
warm-up and not counted. Ours also prints the split: rollout, reward, learner, weight sync.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"


def trl_seconds_per_step(rows, steps: int, out: Path) -> float:
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
                        max_completion_length=32, beta=0.04, learning_rate=1e-6, max_steps=steps + 1,
                        logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                        temperature=1.0, loss_type="grpo", scale_rewards="group", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[math_accuracy], args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return statistics.mean(times[1:])


def ours_seconds_per_step(steps: int, out: Path, engine_dtype: str) -> dict[str, float]:
    from deepalign.recipe import recipe_from_dict
    from grpo.config import GRPORecipe
    from grpo.driver import run

    recipe = recipe_from_dict(GRPORecipe, {
        "policy": {"name": MODEL},
        "data": {"source": "builtin:arithmetic", "num_prompts": 64, "eval_prompts": 4, "max_digits": 2},
        "rewards": [{"name": "math_accuracy"}],
        "algorithm": {"group_size": 4, "prompts_per_step": 4, "beta": 0.04},
        "rollout": {"max_new_tokens": 32, "dtype": engine_dtype},
        "ray": {"enabled": True, "num_cpus": 2},
        "train": {"output_dir": str(out), "steps": steps + 1, "lr": 1e-6, "micro_batch_size": 16},
        "log": {"progress": False, "tensorboard": False},
    })
    run(recipe)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
    keys = ["time/step_s", "time/rollout_s", "time/reward_s", "time/learner_s", "time/weight_sync_s"]
    return {k: statistics.mean(x[k] for x in lines) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--engine-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    from grpo.tasks import load_prompts

    rows, _ = load_prompts("builtin:arithmetic", 64, 4, 0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        ours = ours_seconds_per_step(args.steps, Path(tmp) / "ours", args.engine_dtype)
        theirs = trl_seconds_per_step(rows, args.steps, Path(tmp) / "trl")
    print(f"\nSmolLM2-135M-Instruct, G=4, 4 prompts/step, 32 new tokens, beta 0.04, {args.steps} timed steps")
    print(f"deepalign (Ray, engine {args.engine_dtype}): {ours['time/step_s']:.2f} s/step  "
          f"[rollout {ours['time/rollout_s']:.2f}, reward {ours['time/reward_s']:.2f}, "
          f"learner {ours['time/learner_s']:.2f}, weight sync {ours['time/weight_sync_s']:.2f}]")
    print(f"TRL GRPOTrainer: {theirs:.2f} s/step")
    print(f"ratio ours/TRL: {ours['time/step_s'] / theirs:.2f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
