"""Where a GRPO learner step's time goes: torch profiler over the learner alone, on the setup of
benchmarks/grpo_vs_trl.py (SmolLM2-135M-Instruct, 4 prompts x G = 4, 32 new tokens, beta 0.04,
fp32, one micro-batch of 16).

    python benchmarks/profile_grpo_learner.py [--policy smollm2-135m-instruct] [--tokens 32] [--steps 3] [--warmup 2]
                                              [--rows 20]
    python benchmarks/profile_grpo_learner.py --per-step 6

`--per-step N` runs N unprofiled steps from the first and prints each one's seconds, minor page faults
and system / user time (getrusage): how many steps the heap takes to grow, and the steady step after.

The completions are sampled once by our engine from the built-in arithmetic prompts; then
`--warmup` steps (two: the heap's growth, see `--per-step`) and `--steps` profiled steps of
`Learner.train_step`. Prints the seconds per step, the learner's MFU (policy/flops.py), the share of
self CPU time by kind of op (matmul, the vocabulary-wide log-softmax / entropy work, elementwise,
optimiser, other) and the `--rows` costliest ops. The profiler's own allocations disturb the heap:
a profiled step faults again (200-260k faults, 2.5 s of kernel time seen), which shows up as slow
fills and adds of the (49152, 576) embedding gradient; `--per-step` gives the undisturbed time.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from profile_kinds import seconds_by_kind, shares_line  # this folder's helpers
from torch.profiler import ProfilerActivity, profile

KINDS = {  # op name fragments -> kind, first match wins
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "vocabulary": ("log_softmax", "logsumexp", "aten::gather", "aten::scatter", "token_logprob"),
    "optimiser": ("_foreach", "adam", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::exp", "aten::silu", "aten::pow",
                    "aten::rsqrt", "aten::mean", "aten::sum", "aten::neg", "aten::where", "aten::clamp",
                    "aten::copy_", "aten::cat", "aten::softmax", "aten::_softmax", "aten::fill_", "aten::zero_"),
}


def build(policy: str, tokens: int):
    from data_tools.chat import encode_prompts
    from data_tools.prompts import load_prompts
    from grpo.batch import build_batch
    from grpo.config import GRPORecipe
    from grpo.learner import Learner
    from rollout.engine import SamplingConfig
    from rollout.local import LocalEngine
    from train.recipe import recipe_from_dict

    recipe = recipe_from_dict(GRPORecipe, {
        "policy": {"name": policy}, "rewards": [{"name": "math_accuracy"}],
        "algorithm": {"group_size": 4, "prompts_per_step": 4, "loss": {"beta": 0.04}},
        "rollout": {"sampling": {"max_new_tokens": tokens}}, "ray": {"enabled": False},
        "train": {"micro_batch_size": 16, "steps": 100}, "optim": {"lr": 1e-6},
        "log": {"progress": False, "tensorboard": False}})
    learner = Learner(recipe)
    rows, _ = load_prompts("builtin:arithmetic", 4, 1, 0, 2)
    prompts = encode_prompts(learner.tokenizer, [r.prompt for r in rows])
    import copy

    rollout = LocalEngine(copy.deepcopy(learner.model), learner.tokenizer).generate(
        prompts, 4, SamplingConfig(max_new_tokens=tokens), seed=0)
    advantages = torch.randn(len(rollout.completion_ids))
    return learner, build_batch(rollout, advantages, learner.tokenizer.pad_token_id)


def per_step(learner, batch, steps: int) -> None:
    for i in range(steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        learner.train_step(batch)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        print(f"step {i}: {seconds:.2f} s, faults {after.ru_minflt - before.ru_minflt}, "
              f"sys {after.ru_stime - before.ru_stime:.2f}, user {after.ru_utime - before.ru_utime:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per completion")
    parser.add_argument("--per-step", type=int, default=0, metavar="N",
                        help="instead of profiling: time N steps from the first, with their page faults")
    args = parser.parse_args()
    learner, batch = build(args.policy, args.tokens)
    if args.per_step:
        return per_step(learner, batch, args.per_step)
    for _ in range(args.warmup):
        learner.train_step(batch)
    seconds, metrics = [], {}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            metrics = learner.train_step(batch)
            seconds.append(time.perf_counter() - start)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    print(f"{args.policy}: {len(batch.input_ids)} rows x {batch.completion_width} completion positions, "
          f"{torch.get_num_threads()} threads")
    print(f"learner step: {sum(seconds) / len(seconds):.2f} s (each: {', '.join(f'{s:.2f}' for s in seconds)}), "
          f"{metrics['perf/learner_tflops'] * 1e3:.1f} GFLOP/s of model FLOPs, MFU {metrics['perf/learner_mfu']:.1%}")
    print(shares_line(seconds_by_kind(events, KINDS)))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
