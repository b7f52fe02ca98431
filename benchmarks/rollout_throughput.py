"""Rollout tokens/s: our LocalEngine vs transformers' `generate`, same prompts, batch 16.

    python benchmarks/rollout_throughput.py [--policy tiny|smollm2-135m-instruct|both] [--new-tokens 64]

Both sample at temperature 1 from the same fp32 weights and must produce every token of the
budget (EOS is suppressed for both through `min_new_tokens` / a bias), so the work is identical:
16 rows x new-tokens. Ours also runs with its bf16 weight copy (`--engine-dtype bfloat16`),
reported separately, against transformers in bf16 as well.
"""

from __future__ import annotations

import argparse
import time

import torch

from policy.generate import encode_prompts, left_pad
from policy.load import load_policy
from rollout.engine import SamplingConfig
from rollout.local import LocalEngine


def hf_generate(model, tokenizer, rows, new_tokens: int) -> float:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, valid = left_pad(rows, pad)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=valid.long(), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                       pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    return len(rows) * new_tokens / (time.perf_counter() - start)


def ours(model, tokenizer, rows, new_tokens: int, dtype) -> float:
    engine = LocalEngine(model, tokenizer, dtype=dtype)
    eos = tokenizer.eos_token_id
    engine.eos_id = -1  # never stop early: the same 16 x new_tokens as transformers
    out = engine.generate(rows, 1, SamplingConfig(max_new_tokens=new_tokens, temperature=1.0))
    engine.eos_id = eos
    assert out.new_tokens == len(rows) * new_tokens
    return out.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default="both")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = ["tiny", "smollm2-135m-instruct"] if args.policy == "both" else [args.policy]
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.new_tokens} new tokens, best of {args.repeats}")
    for name in names:
        for dtype in (torch.float32, torch.bfloat16):
            model, tokenizer = load_policy(name)
            model = model.to(dtype)
            prompts = [f"What is {17 * i + 3} + {29 * i + 11}?" for i in range(args.batch)]
            rows = encode_prompts(tokenizer, prompts)
            theirs = max(hf_generate(model, tokenizer, rows, args.new_tokens) for _ in range(args.repeats))
            mine = max(ours(model, tokenizer, rows, args.new_tokens, None) for _ in range(args.repeats))
            print(f"{name:>22} {str(dtype).removeprefix('torch.'):>8}: ours {mine:8.1f} tok/s, "
                  f"transformers generate {theirs:8.1f} tok/s, ratio {mine / theirs:5.2f}x")


if __name__ == "__main__":
    main()
