"""One decode step at 2K cached tokens: our absorbed-MLA decoder vs transformers' decode, CPU fp32.

    python benchmarks/mla_decode.py [--cached 2048] [--batch 1 16] [--repeats 7]

transformers' DeepseekV2Attention caches the same 576-element latent but expands the whole cache
through kv_b_proj into per-head keys and values at every step; ours never expands it
(reference §1.5). Both run the same weights; the script checks their logits agree, then times a
single-token step against a cache of `--cached` tokens and prints transformers / ours.

Shapes: `tiny` (our CPU preset) and `v2-lite-attn` (DeepSeek-V2-Lite's attention: 16 heads,
d_c 512, d_h 128, d_h^R 64, hidden 2048; 2 layers and a small MoE so it fits a laptop).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
from transformers.cache_utils import DynamicCache

from policy.mla_decode import MLADecoder
from policy.presets import DEEPSEEK_PRESETS

SHAPES = {
    "tiny": DEEPSEEK_PRESETS["tiny"]["config"],
    "v2-lite-attn": dict(
        DEEPSEEK_PRESETS["deepseek-v2-lite"]["config"],
        vocab_size=1024, num_hidden_layers=2, intermediate_size=1024, moe_intermediate_size=128,
        n_routed_experts=16, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
}


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def bench(name: str, batch: int, cached: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = DeepseekV2ForCausalLM(DeepseekV2Config(**SHAPES[name])).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, cached))
    step = torch.randint(0, model.config.vocab_size, (batch, 1))

    hf_cache = DynamicCache(config=model.config)
    model(ids, cache=hf_cache, use_cache=True)

    def hf_step():
        out = model(step, cache=hf_cache, use_cache=True).logits
        hf_cache.crop(-1)  # drop the step just added: the cache stays at `cached` tokens
        return out

    decoder = MLADecoder(model, absorbed=True)
    cache = decoder.allocate(batch, cached + 1)
    decoder.forward(ids, cache)

    def our_step():
        out = decoder.forward(step, cache)
        cache.length = cached
        return out

    err = (hf_step() - our_step()).abs().max().item()
    t_hf, t_ours = _best(hf_step, repeats), _best(our_step, repeats)
    print(f"{name:>12} | batch {batch:>2} | cached {cached} | ours {t_ours * 1e3:8.2f} ms | "
          f"transformers {t_hf * 1e3:8.2f} ms | {t_hf / t_ours:5.2f}x faster | "
          f"{batch / t_ours:8.1f} vs {batch / t_hf:8.1f} tok/s | max err {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cached", type=int, default=2048)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()} fp32 CPU, one decode step, best of {args.repeats}")
    for name in args.shapes:
        for batch in args.batch:
            bench(name, batch, args.cached, args.repeats)


if __name__ == "__main__":
    main()
