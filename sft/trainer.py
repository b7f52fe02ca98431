"""The SFT loop: load → (LoRA, checkpointing, FSDP2) → for each step: micro-batches, token-normalised
loss + MoE balance losses, clip, step → log → checkpoint. Reads top to bottom.

Departures from DeepSeek-V2's SFT (V2 §4): none in the objective (next-token loss on assistant
tokens). The paper does not say how its loss is normalised; we use per-token normalisation over
the whole optimiser step (sft/loss.py), which makes results independent of micro-batching and of
the number of data-parallel ranks.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from policy.flops import FlopSpec, flop_spec, measured_peak_flops, mfu_metrics, packed_rows_flops
from policy.load import base_model, load_policy
from policy.lora import apply_lora
from policy.model import DeepseekV2Policy
from sft.config import SFTRecipe
from sft.data import BatchOrder, SFTBatch, collate, load_rows, rank_micro_batches
from sft.loss import count_targets, final_hidden_states, head_loss_sum, normalized_loss, target_token_loss_sum
from train.checkpoint import latest_checkpoint, load_checkpoint, prepare_output_dir, save_checkpoint, save_final
from train.distributed import DistInfo, all_reduce_sum, apply_fsdp, init_distributed, shutdown
from train.host_memory import keep_freed_memory
from train.interrupt import stop_on_interrupt, stopped
from train.optim import make_optimizer, make_scheduler, optimizer_step
from train.tracking import Tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(recipe: SFTRecipe, info: DistInfo):
    """The policy in training mode, with LoRA / gradient checkpointing / FSDP2 applied after it is built."""
    p = recipe.policy
    model, tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
    model.to(info.device)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if recipe.lora.enabled:
        model = apply_lora(model, recipe.lora)
        if recipe.train.gradient_checkpointing:
            model.enable_input_require_grads()
    if info.enabled:
        model = apply_fsdp(model)
    model.train()
    return model, tokenizer


def forward_loss(model, batch: SFTBatch, info: DistInfo):
    """(sum of target-token losses, model output) for one micro-batch.

    On one process the output head runs only at target positions (sft/loss.py:head_loss_sum);
    under FSDP the head's weight is sharded outside the forward, so the full logits are used.
    """
    base = base_model(model)
    kwargs = {}
    if isinstance(base, DeepseekV2Policy):
        kwargs["sequence_ids"] = batch.sequence_ids.to(info.device)
    ids, mask = batch.input_ids.to(info.device), batch.loss_mask.to(info.device)
    with final_hidden_states(model) as captured:
        if captured is not None and not info.enabled:
            kwargs["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=info.device)
        out = model(input_ids=ids, position_ids=batch.position_ids.to(info.device), use_cache=False, **kwargs)
    if "logits_to_keep" in kwargs:
        return head_loss_sum(captured["hidden"], base.get_output_embeddings().weight, ids, mask), out
    return target_token_loss_sum(out.logits, ids, mask), out


def train_step(model, rows, order: BatchOrder, optimizer, scheduler, recipe: SFTRecipe,
               info: DistInfo, flops: FlopSpec | None = None) -> tuple[dict[str, float], torch.Tensor | None]:
    """One optimiser step over one global batch; returns (metrics, mean expert load per MoE layer
    or None), identical on every rank but perf/flops (this rank's model FLOPs, given `flops`)."""
    cfg = recipe.train
    micro = rank_micro_batches(order.next_batch(), info.rank, info.world_size, cfg.micro_batch_size)
    batches = [collate(rows[m]) for m in micro]
    step_targets = int(all_reduce_sum(sum(count_targets(b.loss_mask) for b in batches), info))
    loss_sum, balance, tokens, model_flops = 0.0, {}, 0, 0.0
    stats = []
    for batch in batches:
        token_loss, out = forward_loss(model, batch, info)
        loss = normalized_loss(token_loss, step_targets, info.world_size)
        aux = getattr(out, "aux_loss", None)
        if aux is not None and cfg.balance_loss:
            loss = loss + aux / len(batches)
            for name, value in out.balance_losses.items():
                balance[name] = balance.get(name, 0.0) + value.item() / len(batches)
        loss.backward()
        loss_sum += token_loss.item()
        tokens += batch.num_tokens
        model_flops += 3 * packed_rows_flops(flops, batch.sequence_ids) if flops is not None else 0.0  # fwd + bwd
        stats.extend(getattr(out, "router_stats", None) or [])

    grad_norm, skipped = optimizer_step(model, optimizer, recipe.optim)
    lr = scheduler.get_last_lr()[0]
    scheduler.step()

    metrics = {
        "train/loss": all_reduce_sum(loss_sum, info) / max(step_targets, 1),
        "train/lr": lr,
        "train/grad_norm": grad_norm,
        "train/skipped_step": float(skipped),
        "train/tokens": all_reduce_sum(tokens, info),
        "train/target_tokens": step_targets,
        "train/epoch": order.epoch,
    }
    if flops is not None:
        metrics["perf/flops"] = model_flops
    for name, value in balance.items():
        metrics[f"moe/{name}_balance_loss"] = all_reduce_sum(value, info) / info.world_size
    expert_load = None
    if stats:
        metrics["moe/load_imbalance"] = sum(s.imbalance for s in stats) / len(stats)
        metrics["moe/drop_rate"] = sum(s.drop_rate for s in stats) / len(stats)
        expert_load = torch.stack([s.expert_load for s in stats]).mean(0)
    return metrics, expert_load


@dataclass
class SFTRun:
    """What the loop works on: model, data, optimiser, and where it is."""

    model: object
    tokenizer: object
    rows: object
    order: BatchOrder
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    step: int = 0
    flops: FlopSpec | None = None  # the policy's model FLOPs per token (policy/flops.py), for MFU


def setup(recipe: SFTRecipe, info: DistInfo) -> SFTRun:
    """Model, data and optimiser; resumed from the newest whole checkpoint when there is one."""
    cfg = recipe.train
    model, tokenizer = build_model(recipe, info)
    rows = load_rows(recipe.data, tokenizer)
    global_batch = cfg.micro_batch_size * cfg.grad_accum * info.world_size
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(rows) / global_batch))
    optimizer = make_optimizer(model, recipe.optim, info)
    run = SFTRun(model, tokenizer, rows, BatchOrder(len(rows), recipe.data.seed, global_batch), optimizer,
                 make_scheduler(optimizer, recipe.optim, total_steps), total_steps, flops=flop_spec(model))
    checkpoint = latest_checkpoint(Path(cfg.output_dir), print if info.is_main else lambda _: None) \
        if cfg.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, run.scheduler, info)
        run.step = state["step"]
        run.order.load_state_dict(state["data"])
        if info.is_main:
            print(f"resumed from {checkpoint} at step {run.step}")
    return run


def _peak(model, recipe: SFTRecipe) -> float:
    """FLOP/s the MFU is taken against: log.peak_tflops, else this machine's measured matmul peak."""
    if recipe.log.peak_tflops:
        return recipe.log.peak_tflops * 1e12
    param = next(model.parameters())
    return measured_peak_flops(param.dtype, param.device)


def _save(run: SFTRun, recipe: SFTRecipe, info: DistInfo) -> Path:
    return save_checkpoint(Path(recipe.train.output_dir), run.step, run.model, run.tokenizer, run.optimizer,
                           run.scheduler, run.order.state_dict(), info, keep=recipe.train.keep_checkpoints)


def train(recipe: SFTRecipe) -> Path:
    """Run SFT; returns the directory of the final Hugging Face checkpoint."""
    info = init_distributed()
    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    seed_everything(cfg.seed)
    output_dir = prepare_output_dir(cfg.output_dir) if info.is_main else Path(cfg.output_dir)
    run = setup(recipe, info)
    tracker = Tracker(output_dir / "tensorboard", run.total_steps, "sft", recipe.log, enabled=info.is_main,
                      config=asdict(recipe))
    tracker.advance(run.step)
    last_loss = None
    try:
        with stop_on_interrupt() as stop:
            while run.step < run.total_steps:
                start = time.perf_counter()
                metrics, expert_load = train_step(run.model, run.rows, run.order, run.optimizer, run.scheduler,
                                                  recipe, info, run.flops)
                run.step += 1
                seconds = time.perf_counter() - start
                metrics["train/tokens_per_second"] = metrics["train/tokens"] / seconds
                metrics.update(mfu_metrics(metrics.pop("perf/flops"), seconds, _peak(run.model, recipe), "perf/"))
                if run.step % recipe.log.every == 0 or run.step == run.total_steps:
                    tracker.log(run.step, metrics)
                    if expert_load is not None:
                        tracker.histogram(run.step, "moe/expert_load", expert_load)
                last_loss = metrics["train/loss"]
                tracker.advance(run.step, f"loss {last_loss:.3f}, MFU {metrics['perf/mfu']:.1%}")
                if stop and run.step < run.total_steps:
                    raise stopped(run.step, _save(run, recipe, info) if cfg.save_every else None)
                if cfg.save_every and run.step % cfg.save_every == 0 and run.step < run.total_steps:
                    _save(run, recipe, info)
        final = save_final(output_dir, run.model, run.tokenizer, info) if cfg.save_final else output_dir
    finally:
        tracker.close()
    if info.is_main:
        done = f"final loss {last_loss:.4f} after {run.step} steps" if last_loss is not None else \
            f"already at step {run.step}"
        print(f"{done}; model saved to {final}")
    shutdown(info)
    return final
