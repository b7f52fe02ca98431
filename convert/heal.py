"""The heal after `deepalign policy convert`: distil the dense model into the converted one.

Owns `heal`: forward KL(p_dense || p_converted) over the whole vocabulary at every position of the
teacher's own chats (prompt and reply: the converted model must keep reading prompts the way the
dense one did), plus the converted model's balance losses, with the trainers' AdamW, warm-up +
cosine schedule and gradient clipping (train/optim.py). Every parameter trains; the teacher is
frozen. Mixed precision bf16 runs both forwards under autocast over fp32 weights (fast on AMX CPUs).

Batches are drawn by a seeded permutation (epochs cycle), right-padded; padded positions count in
neither the loss nor the routing (the policy's attention mask reaches its router).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from convert.config import HealConfig
from convert.data import ChatRow
from train.config import LogConfig, OptimConfig
from train.distributed import DistInfo
from train.optim import make_optimizer, make_scheduler, optimizer_step
from train.tracking import Tracker


def forward_kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum over positions where mask is True of KL(softmax(teacher) || softmax(student)), in fp32."""
    s = F.log_softmax(student_logits[mask].float(), dim=-1)
    t = F.log_softmax(teacher_logits[mask].float(), dim=-1)
    return (t.exp() * (t - s)).sum()


def pad_batch(rows: list[ChatRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) right-padded to the longest row."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = True
    return ids, mask


def batches(n_rows: int, batch_size: int, steps: int, seed: int):
    """Index lists, one per step: seeded permutations of the rows, one after another."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n_rows, generator=g).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def heal(model, teacher, rows: list[ChatRow], cfg: HealConfig, pad_id: int = 0, seed: int = 0,
         log_dir: Path | None = None) -> list[dict]:
    """Train `model` in place; returns one {step, kl, aux, lr, grad_norm} per step (kl in nats/token)."""
    if not rows:
        raise ValueError("heal: no chats to heal on (data.heal is 0)")
    optim = OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, grad_clip=cfg.max_grad_norm, weight_decay=0.0)
    optimizer = make_optimizer(model, optim, DistInfo())
    scheduler = make_scheduler(optimizer, optim, cfg.steps)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.mixed_precision == "bf16"
                else contextlib.nullcontext())
    tracker = Tracker(log_dir or Path("."), cfg.steps, "heal", LogConfig(tensorboard=log_dir is not None))
    teacher.eval()
    model.train()
    log: list[dict] = []
    start = time.perf_counter()
    try:
        for step, index in enumerate(batches(len(rows), cfg.batch_size, cfg.steps, seed), start=1):
            ids, mask = pad_batch([rows[i] for i in index], pad_id)
            with torch.no_grad(), autocast:
                target = teacher(input_ids=ids, attention_mask=mask.long()).logits
            with autocast:
                out = model(input_ids=ids, attention_mask=mask.long())
            kl = forward_kl_sum(out.logits, target, mask) / mask.sum()
            loss = kl + (out.aux_loss if out.aux_loss is not None else 0.0)
            loss.backward()
            lr = scheduler.get_last_lr()[0]
            grad_norm, _ = optimizer_step(model, optimizer, optim, float(loss.detach()))
            scheduler.step()
            entry = {"step": step, "kl": float(kl.detach()), "aux": float(loss.detach() - kl.detach()), "lr": lr,
                     "grad_norm": grad_norm}
            log.append(entry)
            tracker.log(step, {f"heal/{k}": v for k, v in entry.items() if k != "step"})
            tracker.advance(step, f"kl {entry['kl']:.3f}  {time.perf_counter() - start:.0f} s")
    finally:
        tracker.close()
        model.eval()
    return log
