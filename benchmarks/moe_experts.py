"""Routed-expert compute: our grouped path vs transformers' per-expert loop, same weights, CPU.

    python benchmarks/moe_experts.py [--experts 64] [--tokens 2048] [--repeats 5]

Both compute sum_k g_{t,k} Expert_{i_{t,k}}(x_t) for the same routing; the script checks they
agree, then times forward and forward+backward and prints ours vs transformers as a ratio.
transformers' own `grouped_mm` experts implementation is timed too: on CPU it falls back to a
Python loop of torch.mm over the sorted expert blocks (transformers/integrations/moe.py).
Ratios are transformers' time / ours (above 1 = ours faster).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import DeepseekV2Config
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Experts

from policy.experts import grouped_experts_forward


def _race(fns: dict, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds per function, runs interleaved so load drifts hit all equally."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256, 1024, 2048])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=352)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = DeepseekV2Config(n_routed_experts=args.experts, hidden_size=args.hidden,
                              moe_intermediate_size=args.intermediate, num_attention_heads=8)
    modules = {}
    for impl in ("eager", "grouped_mm"):
        # each module needs its own config: the implementation is read from it at every call
        cfg = copy.deepcopy(config)
        cfg._experts_implementation = impl
        modules[impl] = DeepseekV2Experts(cfg)
    torch.nn.init.normal_(modules["eager"].gate_up_proj, std=0.02)
    torch.nn.init.normal_(modules["eager"].down_proj, std=0.02)
    modules["grouped_mm"].load_state_dict(modules["eager"].state_dict())

    print(f"experts={args.experts} top_k={args.top_k} hidden={args.hidden} moe_intermediate={args.intermediate} "
          f"threads={torch.get_num_threads()} fp32 CPU, best of {args.repeats}")
    print(f"{'tokens':>6} | {'pass':<9} | {'ours ms':>8} | {'hf loop ms':>10} | {'ratio':>6} | "
          f"{'hf grouped_mm ms':>16} | {'ratio':>6} | max err")
    for n in args.tokens:
        bench_tokens(n, args, modules)


def bench_tokens(n: int, args: argparse.Namespace, modules: dict) -> None:
    hf, hf_grouped = modules["eager"], modules["grouped_mm"]
    x = torch.randn(n, args.hidden, requires_grad=True)
    weights, indices = torch.randn(n, args.experts).softmax(-1).topk(args.top_k, dim=-1)

    def ours():
        return grouped_experts_forward(x, indices, weights, None, hf.gate_up_proj, hf.down_proj, hf.act_fn)

    err = (ours() - hf(x, indices, weights)).abs().max().item()
    with torch.no_grad():
        fwd = _race({"ours": ours, "hf": lambda: hf(x, indices, weights),
                     "hf_grouped": lambda: hf_grouped(x, indices, weights)}, args.repeats)
    bwd = _race({"ours": lambda: ours().sum().backward(),
                 "hf": lambda: hf(x, indices, weights).sum().backward(),
                 "hf_grouped": lambda: hf_grouped(x, indices, weights).sum().backward()}, args.repeats)
    for label, t in (("forward", fwd), ("fwd+bwd", bwd)):
        print(f"{n:>6} | {label:<9} | {t['ours'] * 1e3:8.2f} | {t['hf'] * 1e3:10.2f} | "
              f"{t['hf'] / t['ours']:5.2f}x | {t['hf_grouped'] * 1e3:16.2f} | "
              f"{t['hf_grouped'] / t['ours']:5.2f}x | {err:.1e}")


if __name__ == "__main__":
    main()
