"""SFT throughput: our trainer vs TRL's SFTTrainer, SmolLM2-135M-Instruct, same work, one run.

    python benchmarks/sft_vs_trl.py [--steps 6] [--batch 8] [--seq 256] [--peer-keeps-freed-memory]

Both train SmolLM2-135M-Instruct in fp32 on the CPU on the same synthetic multi-turn chats
(benchmarks/make_synthetic_mixture.py), packed to `--seq` tokens, `--batch` rows per step,
AdamW at the same lr, for `--steps` timed steps after one warm-up step. TRL runs with
`bf16=False` (its default bf16 crawls on CPU), `packing=True` (BFD), no evaluation, no saving.
We count the real (non-padding) tokens each side feeds the model and report tokens/s. Ours keeps
freed host memory for reuse, as `deepalign sft` does (`train.keep_freed_memory`,
train/host_memory.py); TRL runs with glibc's defaults unless `--peer-keeps-freed-memory`.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def synthetic_chats(n: int, seed: int = 0) -> list[list[dict]]:
    spec = importlib.util.spec_from_file_location("synth", REPO / "benchmarks" / "make_synthetic_mixture.py")
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    rng = np.random.default_rng(seed)
    vocab = synth.vocabulary(rng)
    return [synth.chat(rng, vocab, safety=False) for _ in range(n)]


def run_ours(chats, args) -> tuple[float, int]:
    from datasets import Dataset

    from data_tools.chat import render_chat
    from data_tools.packing import pack_documents
    from policy.load import load_policy
    from sft.config import SFTRecipe
    from sft.data import BatchOrder, rows_to_columns
    from sft.trainer import train_step
    from train.distributed import DistInfo
    from train.host_memory import keep_freed_memory
    from train.recipe import recipe_from_dict

    keep_freed_memory()  # as sft/trainer.py's train() does by default
    model, tokenizer = load_policy("smollm2-135m-instruct")
    model.train()
    rows = list(pack_documents((render_chat(tokenizer, c) for c in chats), args.seq, tokenizer.pad_token_id))
    data = Dataset.from_dict(rows_to_columns(rows))
    recipe = recipe_from_dict(SFTRecipe, {"train": {"micro_batch_size": args.batch}, "optim": {"lr": args.lr}})
    order = BatchOrder(len(data), 0, args.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    info = DistInfo()
    train_step(model, data, order, optimizer, scheduler, recipe, info)  # warm-up
    tokens, start = 0, time.perf_counter()
    for _ in range(args.steps):
        tokens += int(train_step(model, data, order, optimizer, scheduler, recipe, info)[0]["train/tokens"])
    return time.perf_counter() - start, tokens


def run_trl(chats, args) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from policy.load import load_policy

    model, tokenizer = load_policy("smollm2-135m-instruct")
    data = Dataset.from_list([{"messages": c} for c in chats])
    timing = {"start": None, "tokens": 0, "steps": 0}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step == 1:  # warm-up step done: start the clock
                timing["start"] = time.perf_counter()
                timing["tokens"] = 0

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, max_steps=args.steps + 1, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
            adam_beta2=0.95, packing=True, max_length=args.seq, bf16=False, fp16=False, use_cpu=True,
            save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1,
            dataloader_num_workers=0, seed=0,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                             callbacks=[Clock()])
        collate = trainer.data_collator

        def counting_collator(features):
            batch = collate(features)
            if timing["start"] is not None:
                mask = batch.get("attention_mask")
                timing["tokens"] += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
            return batch

        trainer.data_collator = counting_collator
        trainer.train()
    return time.perf_counter() - timing["start"], timing["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--chats", type=int, default=600)
    parser.add_argument("--peer-keeps-freed-memory", action="store_true",
                        help="run TRL with the malloc setting ours uses (train/host_memory.py)")
    args = parser.parse_args()
    torch.manual_seed(0)
    chats = synthetic_chats(args.chats)
    print(f"SmolLM2-135M-Instruct, fp32 CPU, {torch.get_num_threads()} threads, packed {args.batch}x{args.seq}, "
          f"{args.steps} timed steps after 1 warm-up")
    ours_s, ours_tok = run_ours(chats, args)
    print(f"ours: {ours_s / args.steps:6.2f} s/step | {ours_tok / ours_s:7.1f} tokens/s")
    from train.host_memory import keep_freed_memory

    keep_freed_memory(args.peer_keeps_freed_memory)
    trl_s, trl_tok = run_trl(chats, args)
    malloc = "freed memory kept, as ours" if args.peer_keeps_freed_memory else "glibc's default malloc"
    print(f"TRL : {trl_s / args.steps:6.2f} s/step | {trl_tok / trl_s:7.1f} tokens/s ({malloc})")
    print(f"ratio: ours {(ours_tok / ours_s) / (trl_tok / trl_s):.2f}x TRL's tokens/s")


if __name__ == "__main__":
    main()
