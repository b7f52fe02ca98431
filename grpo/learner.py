"""The learner: policy + reference + optimiser; scores samples and takes the mu GRPO updates.

One `Learner` per process of the learner group. With several, they form one torch.distributed
group (gloo on CPU, NCCL on GPU) and the policy is sharded with FSDP2 (sft/distributed.py),
each rank taking its share of the batch's rows; with a DeepSeekMoE policy the routed experts are
split over the learners instead (expert parallelism, sft/expert_parallel.py). The reference model
is frozen and sharded with FSDP2 alone. Each distinct prompt of a batch runs once and its KV
cache serves its G completions (`completion_logprobs`). MoE balance losses are added to the loss
when the policy has experts; they are taken over the completion tokens the model reads (all
but the batch's last column, which is only predicted), each completion one sequence: a
departure from SFT's every-token balance, since a prompt's tokens are routed the same in all G
rows and run once here. Token dropping is off for log-probs: dropped tokens would make
pi_theta and pi_old disagree.

Log-probs are taken at temperature `rollout.temperature`, the distribution the engine sampled
from. `full_state_dict()` gathers unsharded weights for the rollout workers.
"""

from __future__ import annotations

import math
import os

import torch

from grpo.batch import GRPOBatch
from grpo.config import GRPORecipe
from grpo.loss import LossConfig, grpo_loss, truncated_is_weights
from policy.load import load_policy
from policy.model import DeepseekV2Policy
from sft.checkpoint import load_checkpoint, save_checkpoint, save_final
from sft.distributed import DistInfo, all_reduce_sum, apply_fsdp, init_distributed
from sft.expert_parallel import apply_expert_parallel


def init_group(rank: int, world: int, address: str, port: int) -> DistInfo:
    """Join the learner group: Ray hands each learner its rank, so set the environment torchrun
    would have set, and let sft/distributed.py do the rest (gloo on CPU, NCCL on GPU)."""
    if world > 1:
        # Ray gives each learner actor its own GPU, visible as device 0
        os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK="0")
    return init_distributed()


def completion_logprobs(model, batch: GRPOBatch, temperature: float, device, entropy: bool = False,
                        share_prompts: bool = True) -> tuple[torch.Tensor, object]:
    """(N, C) log pi(completion token) and the model output (for MoE balance losses); with
    entropy=True the output gains `token_entropy` (N, C), the policy's entropy at each position.

    share_prompts: rows with the same prompt (a group's G samples) run that prompt once; its KV cache
    is then repeated for each row's completion (`_shared_prompt_logits`). Same numbers as one forward
    over the whole rows, on fewer tokens. The output is then the completion forward's (its MoE
    balance losses cover the completion tokens); share_prompts=False gives the whole rows'."""
    ids = batch.input_ids.to(device)
    attention = batch.attention_mask.to(device)
    positions = (attention.long().cumsum(1) - 1).clamp(min=0)
    c = batch.completion_width
    kwargs = {"token_dropping": False} if isinstance(_base(model), DeepseekV2Policy) else {}
    found = _shared_prompt_logits(model, ids, attention, positions, c, kwargs) if share_prompts else None
    if found is None:
        out = model(input_ids=ids, attention_mask=attention.long(), position_ids=positions, use_cache=False,
                    logits_to_keep=c + 1, **kwargs)
        logits = out.logits[:, :-1]
    else:
        logits, out = found
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    all_logp = logits.log_softmax(-1)
    logp = all_logp.gather(-1, ids[:, -c:].unsqueeze(-1)).squeeze(-1)
    if entropy:
        with torch.no_grad():
            out.token_entropy = -(all_logp.exp() * all_logp).sum(-1)
    return logp, out


def _shared_prompt_logits(model, ids, attention, positions, c: int, kwargs) -> tuple[torch.Tensor, object] | None:
    """(N, C, V) logits predicting the completion tokens, running each distinct prompt once.

    The prompt block (left-padded, first P columns) is deduplicated; one forward over the U distinct
    prompts fills a KV cache (transformers' `DynamicCache`, differentiable) and gives the logits at
    their last position (which predict the first completion token); the cache is indexed out to the N
    rows and one forward over the first C - 1 completion tokens gives the rest. None when no prompt
    repeats (nothing to save) or C < 2."""
    n, width = ids.shape
    p = width - c
    if c < 2 or p < 1:
        return None
    key = ids[:, :p].masked_fill(~attention[:, :p], -1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    distinct = int(inverse.max()) + 1
    if distinct == n:
        return None
    rows = torch.arange(n, device=ids.device)
    first = torch.full((distinct,), n, device=ids.device).scatter_reduce(0, inverse, rows, "amin")
    prompt = model(input_ids=ids[first, :p], attention_mask=attention[first, :p].long(),
                   position_ids=positions[first, :p], use_cache=True, logits_to_keep=1, **kwargs)
    cache = prompt.cache
    _select_cache_rows(cache, inverse)
    rest = model(input_ids=ids[:, p : p + c - 1], attention_mask=attention[:, : p + c - 1].long(),
                 position_ids=positions[:, p : p + c - 1], cache=cache, use_cache=True, **kwargs)
    return torch.cat([prompt.logits.index_select(0, inverse), rest.logits], dim=1), rest


def _select_cache_rows(cache, rows: torch.Tensor) -> None:
    """transformers' `cache.batch_select_indices(rows)`, with index_select: the same rows, and a
    backward that sums the G copies' gradients in a fixed order (advanced indexing's accumulating
    backward varies with the CPU threads, so runs of the same recipe drifted apart)."""
    for layer in cache.layers:
        if layer.get_seq_length() > 0:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Learner:
    def __init__(self, recipe: GRPORecipe, rank: int = 0, world: int = 1, address: str = "127.0.0.1",
                 port: int = 29500):
        self.recipe = recipe
        torch.set_num_threads(recipe.train.threads or os.cpu_count())  # Ray actors start with one thread
        self.info = init_group(rank, world, address, port)
        torch.manual_seed(recipe.train.seed)
        p = recipe.policy
        self.model, self.tokenizer = load_policy(p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
        self.model.to(self.info.device)
        a = recipe.algorithm
        self.reference = None
        if a.beta != 0.0:
            self.reference, _ = load_policy(recipe.reference or p.name, p.moe.to_dict(), p.torch_dtype, p.seed)
            self.reference.to(self.info.device).requires_grad_(False)
        attention = recipe.train.attention
        if attention == "auto":
            attention = "sdpa" if self.info.device.type == "cuda" else "eager"
        for model in (self.model, self.reference):
            if model is not None:
                model.set_attn_implementation(attention)
        self.layout = "1 learner"
        if self.info.enabled:
            experts = apply_expert_parallel(self.model, self.info) if recipe.train.expert_parallel else set()
            self.model = apply_fsdp(self.model, ignored_params=experts)
            self.layout = f"{self.info.world_size} learners: FSDP2" + (
                f" + expert parallelism ({len(experts) // 2} MoE layers, 1/{self.info.world_size} of the routed "
                "experts each)" if experts else "")
            if self.reference is not None:
                self.reference = apply_fsdp(self.reference)
        self.model.train()
        t = recipe.train
        # fused: one kernel over all parameters (CPU and CUDA); the per-parameter loop costs ~1 s per
        # step on SmolLM2-135M on CPU
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                           betas=(0.9, 0.95), fused=not self.info.enabled)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / t.warmup_steps) if t.warmup_steps else 1.0)
        self.loss_config = LossConfig(a.eps_low, a.eps_high, a.beta, a.aggregation, a.ratio_level,
                                      recipe.rollout.max_new_tokens)

    def describe(self) -> str:
        return self.layout

    # ---- scoring -------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.recipe.train.mixed_precision == "bf16"
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _my_rows(self, n: int) -> slice:
        per = math.ceil(n / self.info.world_size)
        return slice(self.info.rank * per, min(n, (self.info.rank + 1) * per))

    @torch.no_grad()
    def _score(self, model, batch: GRPOBatch) -> torch.Tensor:
        mb = self.recipe.train.micro_batch_size
        was_training = model.training
        model.eval()
        with self._autocast():
            parts = [completion_logprobs(model, batch.rows(slice(i, i + mb)), self.recipe.rollout.temperature,
                                         self.info.device)[0].cpu() for i in range(0, batch.input_ids.shape[0], mb)]
        model.train(was_training)
        return torch.cat(parts)

    # ---- one GRPO step -----------------------------------------------------------------------
    def train_step(self, batch: GRPOBatch) -> dict[str, float]:
        """mu updates on this rank's rows of the batch; metrics are the same on every rank."""
        a, t = self.recipe.algorithm, self.recipe.train
        num_sequences = batch.input_ids.shape[0]
        num_tokens = int(batch.completion_mask.sum())
        mine = batch.rows(self._my_rows(num_sequences))
        if a.mu > 1:  # with one update pi_old is the current policy: its log-probs come from the same forward
            mine.old_logp = self._score(self.model, mine)
        if self.reference is not None:
            mine.ref_logp = self._score(self.reference, mine)
        metrics: dict[str, float] = {}
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "is_weight": 0.0}
        skipped = 0
        for _ in range(a.mu):
            sums = dict.fromkeys(totals, 0.0)
            for start in range(0, mine.input_ids.shape[0], t.micro_batch_size):
                micro = mine.rows(slice(start, start + t.micro_batch_size))
                with self._autocast():
                    logp, out = completion_logprobs(self.model, micro, self.recipe.rollout.temperature,
                                                    self.info.device, entropy=True)
                mask = micro.completion_mask.to(logp.device)
                old = micro.old_logp.to(logp.device) if micro.old_logp is not None else logp.detach()
                weights = None
                if a.tis_cap is not None:
                    weights = truncated_is_weights(old, micro.rollout_logp.to(logp.device), a.tis_cap)
                    sums["is_weight"] += float((weights * mask).sum())
                ref = micro.ref_logp.to(logp.device) if micro.ref_logp is not None else None
                loss, m = grpo_loss(logp, old, micro.advantages.to(logp.device), mask, self.loss_config, ref,
                                    weights, num_sequences=num_sequences, num_tokens=num_tokens)
                aux = getattr(out, "aux_loss", None)
                if aux is not None and a.balance_loss:
                    loss = loss + aux * micro.input_ids.shape[0] / num_sequences
                # FSDP2 averages gradients over ranks; each rank's loss is its share of the sum
                (loss * self.info.world_size).backward()
                sums["loss"] += float(loss.detach())
                sums["kl"] += m.get("kl", 0.0) * m["tokens"]
                sums["clip_fraction"] += m["clip_fraction"] * m["tokens"]
                sums["entropy"] += float((out.token_entropy * mask).sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or float("inf"))
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            loss_total = all_reduce_sum(sums["loss"], self.info)
            if math.isfinite(grad_norm) and math.isfinite(loss_total):
                self.optimizer.step()
            else:
                skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            for k in totals:
                totals[k] += all_reduce_sum(sums[k], self.info) / a.mu
            metrics["train/grad_norm"] = grad_norm
        self.scheduler.step()
        tokens = max(num_tokens, 1)
        metrics.update({
            "train/loss": totals["loss"],
            "train/kl": totals["kl"] / tokens,
            "train/clip_fraction": totals["clip_fraction"] / tokens,
            "train/entropy": totals["entropy"] / tokens,
            "train/skipped_updates": float(skipped),
            "train/lr": self.scheduler.get_last_lr()[0],
        })
        if a.tis_cap is not None:
            metrics["train/is_weight_mean"] = totals["is_weight"] / tokens
        return metrics

    # ---- weights and checkpoints ---------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Unsharded CPU tensors (on rank 0; None elsewhere). Every rank must call it. On CPU these are
        the live parameters, not copies: the caller serialises or loads them before the next update."""
        state = {}
        for name, value in self.model.state_dict().items():
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            if self.info.is_main:
                state[name] = full.detach().to("cpu")
        return state if self.info.is_main else None

    def save(self, output_dir, step: int, driver_state: dict, keep: int) -> None:
        save_checkpoint(output_dir, step, self.model, self.tokenizer, self.optimizer, self.scheduler, driver_state,
                        self.info, keep=keep)

    def load(self, folder) -> dict:
        return load_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.info)

    def save_final(self, output_dir) -> str:
        return str(save_final(output_dir, self.model, self.tokenizer, self.info))
