"""The learner: policy + reference + optimiser; scores samples and takes the mu GRPO updates.

One `Learner` per process of the learner group. With several, they form one torch.distributed
group (gloo on CPU, NCCL on GPU) and the policy is sharded with FSDP2 (train/distributed.py),
each rank taking its share of the batch's rows; with a DeepSeekMoE policy the routed experts are
split over the learners instead (expert parallelism, train/expert_parallel.py). The reference
model is frozen and sharded with FSDP2 alone. With `lora.enabled` only the adapters train
(policy/lora.py) and, when the reference is the starting policy, it is the same model with its
adapters disabled: no second copy of the weights. Routed-expert adapters run without expert
parallelism (FSDP2 shards them with the rest). Log-probs come from policy/logprobs.py (each
distinct prompt runs once per group; MoE balance losses then cover the completion tokens, each
completion one sequence: a departure from SFT's every-token balance; token dropping off).

Routing replay and the routing agreement with the engine (grpo/replay.py) wrap its forwards
(`_routed`); the engine-mismatch weights (`algorithm.mismatch`) come from grpo/loss.py.

Log-probs are taken at the sampling temperature, the distribution the engine sampled from.
`full_state_dict()` gathers unsharded weights for the rollout workers (with LoRA: merged, under the
base model's names, so an engine never knows about adapters). Metrics stay tensors until
the step ends: one host sync per step, not several per micro-batch.
"""

from __future__ import annotations

import math
import os
import time

import torch

from grpo.batch import GRPOBatch
from grpo.config import GRPORecipe
from grpo.loss import grpo_loss, mismatch_weights
from grpo.replay import moe_layers, recording, replay_indices, replaying
from policy.flops import flop_spec, measured_peak_flops, mfu_metrics, scored_rows_flops
from policy.load import load_policy
from policy.logprobs import completion_logprobs
from policy.lora import adapters_disabled, apply_lora, lora_layout, merged_state_dict
from train.checkpoint import load_checkpoint, save_checkpoint, save_final
from train.distributed import all_reduce_sum, apply_fsdp, full_value, join_group
from train.expert_parallel import apply_expert_parallel
from train.host_memory import keep_freed_memory
from train.optim import make_optimizer, make_scheduler, optimizer_step

SUMS = ("loss", "kl", "clip_fraction", "entropy", "is_weight", "masked", "mismatch_kl")


class Learner:
    def __init__(self, recipe: GRPORecipe, rank: int = 0, world: int = 1, address: str = "127.0.0.1",
                 port: int = 29500):
        self.recipe = recipe
        torch.set_num_threads(recipe.train.threads or os.cpu_count())  # Ray actors start with one thread
        if recipe.train.keep_freed_memory:
            keep_freed_memory()
        self.info = join_group(rank, world, address, port)
        torch.manual_seed(recipe.train.seed)
        p = recipe.policy
        self.model, self.tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
        self.model.to(self.info.device)
        self.flops = flop_spec(self.model)  # before LoRA and sharding: the whole model's activated weights
        if recipe.train.freeze_router:
            for name, param in self.model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    param.requires_grad_(False)
        self.lora = recipe.lora.enabled
        if self.lora:
            self.model = apply_lora(self.model, recipe.lora)
        self.reference, self.shared_reference = None, False
        if recipe.algorithm.loss.beta != 0.0:
            if self.lora and recipe.reference in (None, p.name):
                self.shared_reference = True  # the base under the adapters
            else:
                self.reference, _ = load_policy(recipe.reference or p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
                self.reference.to(self.info.device).requires_grad_(False)
        attention = recipe.train.attention
        if attention == "auto":
            attention = "sdpa" if self.info.device.type == "cuda" else "eager"
        for model in (self.model, self.reference):
            if model is not None:
                model.set_attn_implementation(attention)
        self.layout = self._distribute()
        self.lora_layout = lora_layout(self.model) if self.lora else None
        self.model.train()
        self.agreement = torch.zeros(len(moe_layers(self.model)), 2, dtype=torch.float64)  # see _routed
        self.optimizer = make_optimizer(self.model, recipe.optim, self.info)
        self.scheduler = make_scheduler(self.optimizer, recipe.optim, recipe.train.steps)

    def _distribute(self) -> str:
        """FSDP2 (and expert parallelism) over the learner group; a line saying what ran where."""
        lora = ""
        if self.lora:
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            lora = f"LoRA r={self.recipe.lora.r} ({trainable / 1e6:.2f}M trainable parameters)"
        if not self.info.enabled:
            return "learner: 1 process" + (f", {lora}" if lora else "")
        ep = self.recipe.train.expert_parallel and not (self.lora and self.recipe.lora.routed_experts)
        experts = apply_expert_parallel(self.model, self.info) if ep else set()
        self.model = apply_fsdp(self.model, ignored_params=experts)
        if self.reference is not None:
            self.reference = apply_fsdp(self.reference)
        return f"learners: {self.info.world_size} processes, FSDP2" + (
            f" + expert parallelism ({len(experts) // 2} MoE layers, 1/{self.info.world_size} of the routed "
            "experts each)" if experts else "") + (f", {lora}" if lora else "")

    def describe(self) -> str:
        return self.layout

    # ---- scoring -------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.recipe.train.mixed_precision == "bf16"
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _my_rows(self, n: int) -> slice:
        per = math.ceil(n / self.info.world_size)
        return slice(self.info.rank * per, min(n, (self.info.rank + 1) * per))

    def _logprobs(self, model, batch: GRPOBatch, entropy: bool = False, share_prompts: bool = True):
        device = self.info.device
        return completion_logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device),
                                   batch.completion_width, self.recipe.rollout.sampling.temperature, entropy,
                                   share_prompts=share_prompts)

    def _routed(self, model, micro: GRPOBatch, entropy: bool = False, own: list | None = None,
                record: list | None = None, count: bool = True):
        """Log-probs of a micro-batch under `algorithm.routing_replay` (grpo/replay.py): `rollout`
        routes by the engine's experts, `learner` by `own` (this learner's first pass, recorded into
        `record`), `off` afresh. With `count`, the policy's agreement with the engine's routing is
        counted: in the replayed forward itself (rollout), else in a separate no-grad forward, so
        that counting never changes what the update computes. The shared-prompt path splits the
        forward, so replay runs whole rows."""
        mode = self.recipe.algorithm.routing_replay
        engine = replay_indices(micro.routing, micro.input_ids.shape[1]) if micro.routing is not None else None
        counting = count and model is self.model and engine is not None
        if counting and mode != "rollout":
            with torch.no_grad(), replaying(model, engine, self.agreement, measure_only=True):
                self._logprobs(model, micro, share_prompts=False)
        per_layer = engine if mode == "rollout" else own if mode == "learner" else None
        agreement = self.agreement if counting and mode == "rollout" else None
        with replaying(model, per_layer, agreement):
            if record is None:
                return self._logprobs(model, micro, entropy, share_prompts=per_layer is None)
            with recording(model, record):
                return self._logprobs(model, micro, entropy, share_prompts=False)

    @torch.no_grad()
    def _score(self, model, batch: GRPOBatch, record: list | None = None, count: bool = False) -> torch.Tensor:
        mb = self.recipe.train.micro_batch_size
        was_training = model.training
        model.eval()
        with self._autocast():
            parts = [self._routed(model, batch.rows(slice(i, i + mb)), record=record, count=count and i == 0)[0].cpu()
                     for i in range(0, batch.input_ids.shape[0], mb)]
        model.train(was_training)
        return torch.cat(parts)

    def score(self, batch: GRPOBatch) -> torch.Tensor | None:
        """(N, C) the policy's log-probs of every row (each rank scores all rows; rank 0 returns)."""
        logp = self._score(self.model, batch)
        return logp if self.info.is_main else None

    # ---- one GRPO step -----------------------------------------------------------------------
    def train_step(self, batch: GRPOBatch) -> dict[str, float]:
        """mu updates on this rank's rows of the batch; metrics are the same on every rank."""
        a, started = self.recipe.algorithm, time.perf_counter()
        num_sequences = batch.input_ids.shape[0]
        num_tokens = int(batch.completion_mask.sum())
        mine = batch.rows(self._my_rows(num_sequences))
        self.agreement = torch.zeros(len(moe_layers(self.model)), 2, dtype=torch.float64)
        own = [] if a.routing_replay == "learner" and a.mu > 1 else None  # R2: the first pass's routing
        if a.mu > 1:  # with one update pi_old is the current policy: its log-probs come from the same forward
            mine.old_logp = self._score(self.model, mine, record=own, count=True)
        if self.shared_reference:
            with adapters_disabled(self.model):
                mine.ref_logp = self._score(self.model, mine)
        elif self.reference is not None:
            mine.ref_logp = self._score(self.reference, mine)
        totals = torch.zeros(len(SUMS), dtype=torch.float64)
        skipped, grad_norm = 0, 0.0
        for update in range(a.mu):
            sums = torch.zeros(len(SUMS), dtype=torch.float64, device=self.info.device)
            for i, start in enumerate(range(0, mine.input_ids.shape[0], self.recipe.train.micro_batch_size)):
                micro = mine.rows(slice(start, start + self.recipe.train.micro_batch_size))
                # the agreement is counted on the step's first micro-batch (whole rows), once: with mu > 1 in
                # the old-log-prob pass
                counted = update == 0 and a.mu == 1 and i == 0
                sums += self._backward(micro, num_sequences, num_tokens, own[i] if own else None, counted)
            sums = all_reduce_sum(sums, self.info).cpu()  # every rank scored its own rows
            grad_norm, was_skipped = optimizer_step(self.model, self.optimizer, self.recipe.optim, float(sums[0]))
            skipped += was_skipped
            totals += sums / a.mu
        self.scheduler.step()
        tokens = max(num_tokens, 1)
        loss, kl, clip, entropy, is_weight, masked, mismatch_kl = totals.tolist()
        metrics = {"train/loss": loss, "train/kl": kl / tokens, "train/clip_fraction": clip / tokens,
                   "train/entropy": entropy / tokens, "train/skipped_updates": float(skipped),
                   "train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                   "mismatch/kl": mismatch_kl / tokens}
        if a.tis_cap is not None:
            metrics["train/is_weight_mean"] = is_weight / tokens
            metrics["mismatch/masked_fraction"] = masked / tokens
        return {**metrics, **self._agreement_metrics(), **self._mfu(mine, time.perf_counter() - started)}

    def _mfu(self, mine: GRPOBatch, seconds: float) -> dict[str, float]:
        """perf/learner_tflops and perf/learner_mfu of this rank's step (policy/flops.py): mu forward +
        backward passes, the pi_old pass when mu > 1, the reference pass when there is one."""
        a = self.recipe.algorithm
        passes = 3 * a.mu + (a.mu > 1) + (self.reference is not None or self.shared_reference)
        flops = passes * scored_rows_flops(self.flops, mine.input_ids, mine.attention_mask, mine.completion_width)
        peak = self.recipe.log.peak_tflops
        dtype = torch.bfloat16 if self.recipe.train.mixed_precision == "bf16" else next(self.model.parameters()).dtype
        peak = peak * 1e12 if peak else measured_peak_flops(dtype, self.info.device)
        return mfu_metrics(flops, seconds, peak, "perf/learner_")

    def _agreement_metrics(self) -> dict[str, float]:
        """routing/agreement: the fraction of completion-predicting tokens whose top-k expert set in
        this learner (before any replay) is the engine's; per MoE layer and over all."""
        counts = all_reduce_sum(self.agreement.to(self.info.device), self.info).cpu()
        if not len(counts) or counts[:, 1].sum() == 0:
            return {}
        out = {f"routing/agreement_layer{i}": float(c[0] / c[1]) for i, c in enumerate(counts) if c[1] > 0}
        out["routing/agreement"] = float(counts[:, 0].sum() / counts[:, 1].sum())
        return out

    def _backward(self, micro: GRPOBatch, num_sequences: int, num_tokens: int, own: list | None = None,
                  counted: bool = True) -> torch.Tensor:
        """Loss and backward of one micro-batch; returns its SUMS (loss, token-weighted KL, clip
        fraction, entropy, IS weight, tokens the mismatch correction left out, and the mismatch KL
        KL(engine || learner) per token, k1 on the engine's samples) as one float64 tensor on the
        device, without a host sync."""
        a = self.recipe.algorithm
        with self._autocast():
            logp, out = self._routed(self.model, micro, entropy=True, own=own, count=counted)
        mask = micro.completion_mask.to(logp.device)
        old = micro.old_logp.to(logp.device) if micro.old_logp is not None else logp.detach()
        weights, rollout = None, micro.rollout_logp.to(logp.device)
        if a.tis_cap is not None:
            weights = mismatch_weights(old, rollout, mask, a.mismatch, a.tis_cap, a.mismatch_level, a.icepop_low,
                                       a.icepop_high)
        ref = micro.ref_logp.to(logp.device) if micro.ref_logp is not None else None
        loss, m = grpo_loss(logp, old, micro.advantages.to(logp.device), mask, a.loss, ref, weights,
                            num_sequences=num_sequences, num_tokens=num_tokens,
                            max_tokens=self.recipe.rollout.sampling.max_new_tokens)
        aux = getattr(out, "aux_loss", None)
        if aux is not None and a.balance_loss:
            loss = loss + aux * micro.input_ids.shape[0] / num_sequences
        # FSDP2 averages gradients over ranks; each rank's loss is its share of the sum
        (loss * self.info.world_size).backward()
        zero = torch.zeros((), device=logp.device)
        parts = [loss.detach(), m.get("kl", zero) * m["tokens"], m["clip_fraction"] * m["tokens"],
                 (out.token_entropy * mask).sum(), (weights * mask).sum() if weights is not None else zero,
                 ((weights == 0) & mask).sum() if weights is not None else zero,
                 ((rollout - old.detach()) * mask).sum()]
        return torch.stack([p.double() for p in parts])

    # ---- weights and checkpoints ---------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Unsharded CPU tensors (on rank 0; None elsewhere). Every rank must call it. On CPU these are
        the live parameters, not copies: the caller serialises or loads them before the next update.
        With LoRA: the merged weights, W + (alpha / r) B A, under the base model's names."""
        state = {}
        for name, value in self.model.state_dict().items():
            full = full_value(value)
            if self.info.is_main:
                state[name] = full.detach().to("cpu")
        if not self.info.is_main:
            return None
        return merged_state_dict(state, self.lora_layout) if self.lora else state

    def save(self, output_dir, step: int, driver_state: dict, keep: int) -> str:
        return str(save_checkpoint(output_dir, step, self.model, self.tokenizer, self.optimizer, self.scheduler,
                                   driver_state, self.info, keep=keep))

    def load(self, folder) -> dict:
        return load_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.info)

    def save_final(self, output_dir) -> str:
        return str(save_final(output_dir, self.model, self.tokenizer, self.info))
