"""Expert parallelism for DeepSeekMoE layers, applied to a built model before FSDP2.

Owns `apply_expert_parallel`: each of the W ranks of the learner group keeps E/W of every MoE
layer's routed experts and computes them for every rank's tokens. A token's hidden state travels
to the rank holding its chosen expert and the expert's output travels back, with two
all-to-alls per layer (`torch.distributed.nn.functional.all_to_all_single`, whose backward
sends the gradients back the same way). The expert tensors become DTensors sharded on the
expert dimension, so checkpoints (`get_model_state_dict` with full_state_dict), weight sync
(`full_tensor()`), gradient clipping and the optimiser see whole tensors. Attention, router,
shared experts, embeddings and head stay with FSDP2 (`apply_fsdp(..., ignored_params=...)`).

Gradient scale: FSDP2 averages gradients over ranks, so learners scale their loss by W (as
sft/loss.py does). An expert's gradient is not averaged (each rank owns its experts and receives
every rank's contribution through the all-to-all), so it is divided by W here.

Departures from the paper: DeepSeek-V2 runs EP over 8 devices inside pipeline stages; here EP
spans the whole learner group. The "devices" of device-limited routing and of the device and
communication balance losses stay the config's expert groups (`n_group`), which need not be the
ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_to_all_single

from policy.experts import grouped_linear
from policy.load import base_model
from train.distributed import DistInfo


class ExpertParallelCompute:
    """Replaces a DeepSeekMoE layer's expert computation: same arguments and result as
    policy.experts.grouped_experts_forward, with the experts spread over the group."""

    def __init__(self, group, rank: int, world: int, num_experts: int):
        self.group, self.rank, self.world = group, rank, world
        self.num_experts, self.local = num_experts, num_experts // world

    def _exchange_counts(self, send: torch.Tensor) -> torch.Tensor:
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        return recv

    def __call__(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor | None,
                 gate_up_proj, down_proj, act_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        n_tokens, top_k = indices.shape
        expert = indices.reshape(-1)
        token = torch.arange(n_tokens, device=x.device).repeat_interleave(top_k)
        gate_weight = weights.reshape(-1)
        if keep is not None:
            kept = keep.reshape(-1)
            expert, token, gate_weight = expert[kept], token[kept], gate_weight[kept]
        order = torch.argsort(expert, stable=True)  # by expert, hence by the rank that holds it
        expert, token, gate_weight = expert[order], token[order], gate_weight[order]
        owner = expert // self.local
        send = torch.bincount(owner, minlength=self.world)
        recv = self._exchange_counts(send)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()

        # 1. dispatch: each assignment's hidden state (and which of the owner's experts) to its owner
        rows = all_to_all_single(x.new_empty(sum(recv_sizes), x.shape[1]), x.index_select(0, token), recv_sizes,
                                 send_sizes, group=self.group)
        local_expert = torch.empty(sum(recv_sizes), dtype=expert.dtype, device=x.device)
        dist.all_to_all_single(local_expert, expert - owner * self.local, recv_sizes, send_sizes, group=self.group)

        # 2. this rank's experts over every rank's rows (grouped matmuls, as on one device)
        w_in, w_out = _local(gate_up_proj, self.world), _local(down_proj, self.world)
        by_expert = torch.argsort(local_expert, stable=True)
        offs = torch.cumsum(torch.bincount(local_expert, minlength=self.local), 0).to(torch.int32)
        gate, up = grouped_linear(rows[by_expert], w_in, offs).chunk(2, dim=-1)
        y = grouped_linear(act_fn(gate) * up, w_out, offs)
        if y.shape[0] == 0:  # no rows came: keep the experts in the graph so every rank's backward matches
            y = y + 0.0 * (w_in.sum() + w_out.sum())
        y = torch.empty_like(y).index_copy(0, by_expert, y)  # back to arrival order

        # 3. combine: outputs return to the ranks their tokens came from
        back = all_to_all_single(x.new_empty(token.shape[0], x.shape[1]), y, send_sizes, recv_sizes,
                                 group=self.group)
        back = back * gate_weight.unsqueeze(1).to(back.dtype)
        return torch.zeros_like(x).index_add_(0, token, back.to(x.dtype))


def _local(param, world: int) -> torch.Tensor:
    """This rank's slice of a DTensor expert parameter; its gradient is divided by the group size."""
    local = param.to_local() if hasattr(param, "to_local") else param
    if local.requires_grad:
        local.register_hook(lambda grad: grad / world)
    return local


def apply_expert_parallel(model: nn.Module, info: DistInfo) -> set[nn.Parameter]:
    """Shard the routed experts of every DeepSeekMoE layer over the group (a no-op for models
    without experts or with one rank). Returns the expert parameters, for `apply_fsdp` to ignore."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    base = base_model(model)
    layers = base.moe_layers() if hasattr(base, "moe_layers") else []
    if not info.enabled or not layers:
        return set()
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    params: set[nn.Parameter] = set()
    for moe in layers:
        if moe.num_experts % info.world_size:
            raise ValueError(f"expert parallelism: {moe.num_experts} routed experts do not split evenly over "
                             f"{info.world_size} learners")
        for name in ("gate_up_proj", "down_proj"):
            full = getattr(moe.experts, name)
            shard = nn.Parameter(distribute_tensor(full.detach(), mesh, [Shard(0)]), requires_grad=full.requires_grad)
            setattr(moe.experts, name, shard)
            params.add(shard)
        moe.expert_compute = ExpertParallelCompute(mesh.get_group(), info.rank, info.world_size, moe.num_experts)
    return params
