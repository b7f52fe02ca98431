"""Where a rollout's time goes: torch profiler over one `LocalEngine.generate` call, on the setup of
benchmarks/rollout_throughput.py (same prompts, temperature 1, fp32, every token of the budget).

    python benchmarks/profile_rollout.py [--policy smollm2-135m-instruct] [--batch 64] [--new-tokens 64] [--rows 12]

Prints the unprofiled tokens/s (best of two after a warm-up call), the profiled call's seconds, the
share of self CPU time by kind of op (the packed matmuls, attention's batched matmuls, the
sampler's vocabulary-wide work, other) and the `--rows` costliest ops.
"""

from __future__ import annotations

import argparse
import time

import torch
from profile_kinds import seconds_by_kind, shares_line  # this folder's helpers
from rollout_throughput import prompt_rows  # this folder's script: the same prompts
from torch.profiler import ProfilerActivity, profile

from policy.load import load_policy
from rollout.engine import SamplingConfig
from rollout.local import LocalEngine

KINDS = {  # op name fragments -> kind, first match wins
    "matmul": ("_linear_pointwise", "aten::mm", "aten::addmm", "aten::linear"),
    "attention": ("aten::bmm", "aten::baddbmm", "softmax"),
    # an upper bound on the sampler: aten::sum and aten::sub also count the norms' and rotary work
    "sampler": ("aten::cumsum", "aten::exp", "aten::amax", "aten::searchsorted", "aten::sum", "aten::sub"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    model, tokenizer = load_policy(args.policy)
    engine = LocalEngine(model, tokenizer)
    engine.eos_id = -1  # every token of the budget, as rollout_throughput.py
    rows = prompt_rows(tokenizer, args.batch)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)
    engine.generate(rows, 1, sampling)  # warm-up
    speed = max(engine.generate(rows, 1, sampling).tokens_per_second for _ in range(2))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        engine.generate(rows, 1, sampling)
        seconds = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    print(f"{args.policy} batch {args.batch} x {args.new_tokens} new tokens, {torch.get_num_threads()} threads: "
          f"{speed:.1f} tok/s unprofiled; profiled call {seconds:.2f} s")
    print(shares_line(seconds_by_kind(events, KINDS)))
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        print(f"  {e.key:40s} {e.self_cpu_time_total / 1e6:6.2f} s  {e.count:5d} calls  "
              f"{e.self_cpu_time_total / e.count / 1e3:7.2f} ms each")


if __name__ == "__main__":
    main()
