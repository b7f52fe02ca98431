"""Rollout tokens/s: our LocalEngine vs transformers' `generate`, same prompts, batch 16.

    python benchmarks/rollout_throughput.py [--policy tiny|smollm2-135m-instruct|both] [--new-tokens 64]

Both sample at temperature 1 from the same weights and produce every token of the budget
(transformers through `min_new_tokens`, ours by never matching EOS), so the work is identical:
16 rows x new-tokens. The peer is transformers' own model class on the same checkpoint
(`AutoModelForCausalLM`: transformers' DeepseekV2ForCausalLM for `tiny`, LlamaForCausalLM for
SmolLM2) with its `generate`. Rows: both fp32; both bf16; and ours with a bf16 weight copy
against transformers in fp32 (the rollout configuration of recipes/smollm2/grpo_arith.yaml).
"""

from __future__ import annotations

import argparse
import time

import torch

from data_tools.chat import encode_prompts
from policy.load import load_policy, pad_token_id
from rollout.engine import SamplingConfig
from rollout.local import LocalEngine, left_pad


def hf_generate(model, tokenizer, rows, new_tokens: int) -> float:
    pad = pad_token_id(tokenizer)
    ids, valid = left_pad(rows, pad)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=valid.long(), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                       pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    return len(rows) * new_tokens / (time.perf_counter() - start)


def ours(model, tokenizer, rows, new_tokens: int) -> float:
    engine = LocalEngine(model, tokenizer)
    eos = tokenizer.eos_token_id
    engine.eos_id = -1  # never stop early: the same 16 x new_tokens as transformers
    out = engine.generate(rows, 1, SamplingConfig(max_new_tokens=new_tokens, temperature=1.0))
    engine.eos_id = eos
    assert out.new_tokens == len(rows) * new_tokens
    return out.tokens_per_second


def peer_model(name: str, dtype):
    """transformers' own class for the checkpoint (tiny is saved first, then loaded back)."""
    from transformers import AutoModelForCausalLM

    from policy.load import checkpoint_folder

    if name == "tiny":
        import tempfile

        model, _ = load_policy("tiny")
        folder = tempfile.mkdtemp()
        model.save_pretrained(folder)
    else:
        folder = checkpoint_folder(name)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default="both")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = ["tiny", "smollm2-135m-instruct"] if args.policy == "both" else [args.policy]
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.new_tokens} new tokens, "
          f"best of {args.repeats}")
    for name in names:
        tokenizer = load_policy(name)[1]
        prompts = [f"What is {17 * i + 3} + {29 * i + 11}?" for i in range(args.batch)]
        rows = encode_prompts(tokenizer, prompts)
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            peer = peer_model(name, dtype)
            results[("hf", dtype)] = max(hf_generate(peer, tokenizer, rows, args.new_tokens)
                                         for _ in range(args.repeats))
            mine = load_policy(name)[0].to(dtype)
            results[("ours", dtype)] = max(ours(mine, tokenizer, rows, args.new_tokens) for _ in range(args.repeats))
        for label, a, b in (("fp32 vs fp32", ("ours", torch.float32), ("hf", torch.float32)),
                            ("bf16 vs bf16", ("ours", torch.bfloat16), ("hf", torch.bfloat16)),
                            ("ours bf16 vs transformers fp32", ("ours", torch.bfloat16), ("hf", torch.float32))):
            print(f"{name:>22} {label:>31}: ours {results[a]:8.1f} tok/s, transformers generate "
                  f"{results[b]:8.1f} tok/s, ratio {results[a] / results[b]:5.2f}x")


if __name__ == "__main__":
    main()
