"""Process-group set-up and FSDP2, applied to a model after it is built.

`init_distributed()` reads torchrun's environment (gloo on CPU, NCCL on GPU); `join_group` sets
that environment for a learner that Ray started, then does the same; `apply_fsdp` shards each
decoder layer and then the root with `torch.distributed.fsdp.fully_shard`. With one process
nothing is wrapped and the collectives below are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def join_group(rank: int, world: int, address: str, port: int) -> DistInfo:
    """Join a process group whose members were started by something other than torchrun (Ray hands
    each learner its rank and one GPU, visible as device 0)."""
    if world > 1:
        os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK="0")
    return init_distributed()


def apply_fsdp(model: torch.nn.Module, ignored_params: set | None = None) -> torch.nn.Module:
    """FSDP2: shard every decoder layer, then the rest (embeddings, norm, head) at the root.
    ignored_params: parameters another scheme already distributes (train/expert_parallel.py). A peft
    (LoRA) model is sharded the same way: frozen base weights and adapters share each layer's unit."""
    from torch.distributed.fsdp import fully_shard

    from policy.load import base_model

    for layer in base_model(model).model.layers:
        fully_shard(layer, ignored_params=ignored_params or None)
    fully_shard(model, ignored_params=ignored_params or None)
    return model


def full_value(x):
    """A DTensor's whole value (FSDP2 and expert-parallel parameters, norms, state); anything else as is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def all_reduce_sum(value, info: DistInfo):
    """The sum over ranks of a number (returns a float) or a tensor (returns a tensor, in one call)."""
    if not info.enabled:
        return value
    if isinstance(value, torch.Tensor):
        out = value.to(info.device, copy=True)
        dist.all_reduce(out)
        return out
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Tear the group down together: a barrier first, so no rank destroys its end while a peer is
    still between its last collective and its own teardown (CI once saw rank 1 abort at exit)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
