"""DeepSeekMoE layer: transformers' DeepseekV2Moe parameters with our routing and expert compute.

Owns: `MoEOptions` (balance-loss coefficients, devices, token dropping), `RoutingContext` (which
sequence each token belongs to, which sequences are protected from dropping), and `DeepSeekMoE`,
a drop-in for transformers' `DeepseekV2Moe` that *reuses its submodules* (`gate.weight`,
`experts.gate_up_proj`, `experts.down_proj`, `shared_experts.*`), so parameter names and
checkpoint files are exactly transformers' (and DeepSeek's, and vLLM's).

What it adds over transformers: the three balance losses (policy/balance.py), device-limited
routing and token dropping (policy/routing.py), router statistics, and grouped expert compute
(policy/experts.py). With all of them off it computes exactly what transformers computes.

The context is set by the policy's forward (policy/model.py) before each call; it stays in place
until the next forward so that activation-checkpoint recomputation sees the same routing.

Routing replay (R3, grpo/replay.py): with `replay` set, the marked tokens go to the given experts
instead of this router's top-k, weighted by this router's scores of them; balance losses and
router statistics then see the replayed choice. `routing_sink` records each forward's choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from policy.balance import (
    communication_balance_loss,
    device_balance_loss,
    expert_balance_loss,
    routing_fractions,
)
from policy.experts import dense_experts_forward, expert_tensors, grouped_experts_forward, loop_experts_forward
from policy.routing import RouterStats, capacity_keep_mask, router_stats, select_experts


@dataclass
class MoEOptions:
    """Our MoE settings beyond transformers' config (V2 §2.2.3-2.2.4).

    expert_balance_alpha / device_balance_alpha / comm_balance_alpha: a1, a2, a3 (0 = off).
    num_devices: D for the device and communication losses and for token dropping;
        None = the config's n_group (the paper's routing groups are its devices).
    token_dropping: drop assignments beyond a device's capacity, training only.
    capacity_factor: device budget as a multiple of the average load (paper: 1.0).
    protected_fraction: fraction of sequences whose tokens are never dropped (paper: ~10%).
    expert_impl: "grouped" (sorted grouped matmul), "dense" (every expert on every token: the
        rollout engine's decode steps) or "loop" (per-expert reference).
    router_stats: compute per-layer load statistics (off in the rollout engine, which never reads them).
    """

    expert_balance_alpha: float = 0.0
    device_balance_alpha: float = 0.0
    comm_balance_alpha: float = 0.0
    num_devices: int | None = None
    token_dropping: bool = False
    capacity_factor: float = 1.0
    protected_fraction: float = 0.1
    expert_impl: str = "grouped"
    router_stats: bool = True

    def __post_init__(self) -> None:
        if self.expert_impl not in ("grouped", "dense", "loop"):
            raise ValueError(f"moe.expert_impl must be 'grouped', 'dense' or 'loop', got {self.expert_impl!r}")
        if not 0.0 <= self.protected_fraction <= 1.0:
            raise ValueError(f"moe.protected_fraction must be in [0, 1], got {self.protected_fraction}")
        if self.capacity_factor <= 0:
            raise ValueError(f"moe.capacity_factor must be > 0, got {self.capacity_factor}")


@dataclass
class RoutingContext:
    """Per-forward facts the MoE layers need about the batch.

    seq_index: (N,) long, the sequence of each flattened token; -1 = padding (not counted).
    num_seqs: number of sequences (rows, or documents of packed rows).
    protected: (N,) bool, True = the token's sequence is protected from dropping.
    token_dropping: whether dropping applies in this forward.
    """

    seq_index: torch.Tensor
    num_seqs: int
    protected: torch.Tensor
    token_dropping: bool


@dataclass
class MoEAux:
    """What one MoE layer returns beside its output: losses (with grad) and stats (detached)."""

    balance_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: RouterStats | None = None


class DeepSeekMoE(nn.Module):
    """Shared experts + top-K routed experts, built around transformers' DeepseekV2Moe modules."""

    def __init__(self, hf_moe: nn.Module, config, options: MoEOptions):
        super().__init__()
        self.gate = hf_moe.gate
        self.experts = hf_moe.experts
        self.shared_experts = hf_moe.shared_experts
        self.options = options
        self.num_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.routed_scaling_factor = config.routed_scaling_factor
        grouped = config.topk_method == "group_limited_greedy"
        self.n_group = (config.n_group or 1) if grouped else 1
        self.topk_group = (config.topk_group or 1) if grouped else 1
        self.num_devices = options.num_devices or config.n_group or 1
        if self.num_experts % self.num_devices:
            raise ValueError(
                f"n_routed_experts={self.num_experts} is not divisible by the number of devices "
                f"{self.num_devices} (n_group / moe.num_devices)"
            )
        self.comm_topk = self.topk_group if self.n_group > 1 else min(self.top_k, self.num_devices)
        self.context: RoutingContext | None = None
        self.aux = MoEAux()
        # routing replay (grpo/replay.py): `replay` (tokens, top_k) expert ids to route by, -1 = route as usual;
        # `routing_sink` a list each forward appends its (tokens, top_k) choice to (the engine records with it)
        self.replay: torch.Tensor | None = None
        self.routing_sink: list | None = None
        self.replay_agreement = (0, 0)  # (replayed tokens whose own top-k set was the replayed one, replayed tokens)
        self.replay_measure_only = False  # count the agreement but route as usual
        # set by train/expert_parallel.py when the routed experts are sharded over ranks
        self.expert_compute: Callable | None = None

    def _default_context(self, n_tokens: int, rows: int) -> RoutingContext:
        device = self.gate.weight.device
        seq_index = torch.arange(rows, device=device).repeat_interleave(n_tokens // rows)
        protected = torch.zeros(n_tokens, dtype=torch.bool, device=device)
        dropping = self.training and self.options.token_dropping
        return RoutingContext(seq_index, rows, protected, dropping)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        ctx = self.context
        if ctx is None or ctx.seq_index.numel() != x.shape[0]:
            ctx = self._default_context(x.shape[0], shape[0] if len(shape) == 3 else 1)

        logits = F.linear(x.float(), self.gate.weight.float())
        scores = logits.softmax(dim=-1)
        weights, indices = select_experts(scores, self.top_k, self.n_group, self.topk_group)
        if self.routing_sink is not None:
            self.routing_sink.append(indices.detach())
        if self.replay is not None and self.replay.shape[0] == x.shape[0]:
            weights, indices = self._replayed(scores, weights, indices)
        valid = ctx.seq_index >= 0
        keep = None
        if self.training and ctx.token_dropping:
            keep = capacity_keep_mask(
                indices, weights, self.num_experts, self.num_devices, ctx.protected, valid,
                self.options.capacity_factor,
            )
        compute = self.expert_compute or {"grouped": grouped_experts_forward, "dense": dense_experts_forward,
                                          "loop": loop_experts_forward}[self.options.expert_impl]
        experts, lora = expert_tensors(self.experts)  # LoRA factors, when peft wraps the experts
        routed = compute(
            x, indices, weights * self.routed_scaling_factor, keep,
            experts.gate_up_proj, experts.down_proj, experts.act_fn, **({"lora": lora} if lora else {}),
        )
        self.aux = self._aux(scores, indices, keep, valid, ctx)
        return routed.view(shape) + self.shared_experts(hidden_states)

    def _replayed(self, scores, weights, indices):
        """Route the replayed tokens to the replayed experts; their gate weights are this router's own
        scores of those experts (so the router keeps its gradient). Counts how often the replayed set
        is the one this router chose."""
        replay = self.replay.to(indices.device)
        use = replay[:, 0] >= 0
        with torch.no_grad():
            same = (indices.sort(-1).values == replay.sort(-1).values).all(-1) & use
            self.replay_agreement = (int(same.sum()), int(use.sum()))
        if self.replay_measure_only:
            return weights, indices
        indices = torch.where(use.unsqueeze(1), replay, indices)
        weights = torch.where(use.unsqueeze(1), scores.gather(-1, indices), weights)
        return weights, indices

    def _aux(self, scores, indices, keep, valid, ctx: RoutingContext) -> MoEAux:
        stats = None
        if self.options.router_stats:
            with torch.no_grad():
                stats = router_stats(indices, keep if keep is not None else torch.ones_like(indices, dtype=torch.bool),
                                     valid, self.num_experts)
        o = self.options
        losses: dict[str, torch.Tensor] = {}
        if self.training and (o.expert_balance_alpha or o.device_balance_alpha or o.comm_balance_alpha):
            f, p, tokens = routing_fractions(scores, indices, ctx.seq_index, ctx.num_seqs)
            if o.expert_balance_alpha:
                losses["expert"] = expert_balance_loss(f, p, tokens, o.expert_balance_alpha)
            if o.device_balance_alpha:
                losses["device"] = device_balance_loss(f, p, tokens, self.num_devices, o.device_balance_alpha)
            if o.comm_balance_alpha:
                losses["communication"] = communication_balance_loss(
                    indices, p, tokens, ctx.seq_index, self.num_devices, self.comm_topk, o.comm_balance_alpha
                )
        return MoEAux(losses, stats)
