"""Dense SwiGLU FFN -> DeepSeekMoE (shared + fine-grained routed experts), one layer's weights.

Owns the FFN half of `deepalign policy convert`. A SwiGLU FFN is a sum over its intermediate
neurons, so splitting the neurons into groups and summing the groups' outputs is exact; routing
makes it sparse. Method (MoEfication, Zhang et al. 2022, with DeepSeekMoE's shared experts):

- Shared experts: the n_shared * m neurons with the largest mean squared contribution
  |silu(g.x) (u.x)| * |down column| on calibration inputs; they always run.
- Routed experts: the other neurons, clustered into equal groups of m by co-activation (balanced
  k-means on each neuron's contribution profile over the calibration tokens), so that a token's
  active neurons tend to share an expert.
- Router: a linear fit (least squares) of each expert's output norm from the FFN input; top-k of
  its softmax picks the experts that matter most for the token. The fitted logits are scaled down
  (std `router_logit_std`) so the softmax is nearly flat, and `routed_scaling_factor` = n_routed
  makes a chosen expert's weight ~1: the same weight its neurons had in the dense FFN.

What the conversion cannot keep is the unchosen experts' output; the report gives its size
(relative error of the layer's output on calibration data) and the router's recall of the
oracle top-k. The heal (convert/heal.py) trains it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MoEShape:
    moe_intermediate_size: int  # m, neurons per expert
    n_shared_experts: int
    n_routed_experts: int
    top_k: int
    router_logit_std: float = 0.1


@dataclass
class MoEWeights:
    shared_gate: torch.Tensor  # (n_shared * m, d)
    shared_up: torch.Tensor
    shared_down: torch.Tensor  # (d, n_shared * m)
    gate_up_proj: torch.Tensor  # (E, 2m, d): transformers' fused layout, gate rows first
    down_proj: torch.Tensor  # (E, d, m)
    router: torch.Tensor  # (E, d)
    relative_error: float  # |moe(x) - ffn(x)| / |ffn(x)| on the calibration inputs
    router_recall: float  # mean share of the oracle top-k experts the router picks


def neuron_contributions(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor):
    """(T, I) activations silu(g.x) * (u.x) and their contribution sizes |act| * |down column|."""
    act = F.silu(x @ w_gate.T) * (x @ w_up.T)
    return act, act.abs() * w_down.norm(dim=0)


def balanced_clusters(profiles: torch.Tensor, groups: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """profiles (N, T) -> (groups, N // groups) neuron indices: balanced k-means on cosine similarity."""
    n = profiles.shape[0]
    size = n // groups
    feats = F.normalize(profiles, dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = feats[torch.randperm(n, generator=gen)[:groups]]
    for _ in range(iters):
        sim = feats @ centroids.T  # (N, groups)
        order = sim.reshape(-1).argsort(descending=True, stable=True).tolist()
        owner = [-1] * n  # plain lists: this greedy pass is sequential, and tensor indexing per item is slow
        room = [size] * groups
        for flat in order:
            neuron, group = divmod(flat, groups)
            if owner[neuron] < 0 and room[group]:
                owner[neuron] = group
                room[group] -= 1
        assigned = torch.tensor(owner)
        centroids = torch.stack([F.normalize(feats[assigned == g].mean(0), dim=0) for g in range(groups)])
    return torch.stack([torch.nonzero(assigned == g).squeeze(1) for g in range(groups)])


def convert_ffn(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, x: torch.Tensor,
                shape: MoEShape, seed: int = 0) -> MoEWeights:
    """w_gate / w_up (I, d), w_down (d, I): the dense FFN; x (T, d): calibration FFN inputs."""
    m, n_shared, n_routed = shape.moe_intermediate_size, shape.n_shared_experts, shape.n_routed_experts
    inter = w_gate.shape[0]
    if (n_shared + n_routed) * m != inter:
        raise ValueError(f"(n_shared_experts + n_routed_experts) * moe_intermediate_size = "
                         f"{(n_shared + n_routed) * m} must equal the dense intermediate_size {inter}")
    act, contrib = neuron_contributions(x, w_gate, w_up, w_down)
    order = contrib.pow(2).mean(0).argsort(descending=True)
    shared, rest = order[: n_shared * m].sort().values, order[n_shared * m:]
    groups = rest[balanced_clusters(contrib[:, rest].T, n_routed, seed=seed)]  # (E, m)
    groups = groups.sort(dim=1).values
    expert_out = torch.stack([act[:, g] @ w_down[:, g].T for g in groups], dim=1)  # (T, E, d)
    target = expert_out.norm(dim=-1)  # (T, E)
    fit = torch.linalg.lstsq(x.double(), (target - target.mean(1, keepdim=True)).double()).solution.T.float()
    logits = x @ fit.T
    router = fit * (shape.router_logit_std / logits.std().clamp_min(1e-12))
    chosen = (x @ router.T).topk(shape.top_k, dim=-1).indices
    oracle = target.topk(shape.top_k, dim=-1).indices
    recall = (chosen.unsqueeze(-1) == oracle.unsqueeze(-2)).any(-1).float().mean()
    weights = (x @ router.T).softmax(-1).gather(-1, chosen) * n_routed
    routed = (expert_out.gather(1, chosen[..., None].expand(-1, -1, x.shape[1])) * weights[..., None]).sum(1)
    dense = act @ w_down.T
    moe = routed + act[:, shared] @ w_down[:, shared].T
    return MoEWeights(
        shared_gate=w_gate[shared], shared_up=w_up[shared], shared_down=w_down[:, shared],
        gate_up_proj=torch.cat([w_gate[groups], w_up[groups]], dim=1), down_proj=w_down[:, groups].permute(1, 0, 2),
        router=router, relative_error=float((moe - dense).norm() / dense.norm()), router_recall=float(recall),
    )
