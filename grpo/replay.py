"""Routing replay for DeepSeekMoE policies: the learner routes tokens to the experts the rollout
engine chose (R3, `algorithm.routing_replay: rollout`) or to the ones its own first pass chose
across the mu updates (R2-style, `learner`).

MoE RL collapses when engine and learner route differently: a token whose top-k set differs sees
other experts, and the log-prob ratio carries that noise into every update. Replay fixes the
*choice* of experts; the gate weights stay this learner's router scores of the chosen experts, so
the router still learns. What is replayed: the positions whose outputs predict completion tokens
(rollout/routing_record.py); the prompt's other tokens are routed by the learner. The MoE layers
count how often their own top-k set is the replayed one (`routing/agreement`).

Departure from R3 as published (recorded on Megatron + SGLang, prefill included): our engine does
not record prompt tokens, whose routing only reaches the completion through attention.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def replay_indices(routing: torch.Tensor, width: int) -> list[torch.Tensor]:
    """Per MoE layer, the (N * width, top_k) expert ids for a [prompt | completion] batch of rows
    `width` wide whose completion block is routing's C columns: column P - 1 + j (predicting
    completion token j) takes routing[:, j]; every other position is -1 (routed as usual)."""
    n, c, layers, top_k = routing.shape
    first = width - c - 1
    out = []
    for layer in range(layers):
        full = torch.full((n, width, top_k), -1, dtype=torch.long)
        full[:, first : first + c] = routing[:, :, layer].long()
        out.append(full.view(n * width, top_k))
    return out


def moe_layers(model) -> list:
    from policy.load import base_model

    base = base_model(model)
    return list(base.moe_layers()) if hasattr(base, "moe_layers") else []


@contextmanager
def replaying(model, per_layer: list[torch.Tensor] | None, agreement: torch.Tensor | None = None,
              measure_only: bool = False):
    """Inside, the model's MoE layers route by `per_layer` (None: no replay; measure_only: route as
    usual and only count). agreement, a (layers, 2) tensor, gains each layer's (tokens whose own
    top-k was the given set, tokens given)."""
    layers = moe_layers(model) if per_layer is not None else []
    for moe, indices in zip(layers, per_layer or [], strict=False):
        moe.replay, moe.replay_measure_only = indices, measure_only
    try:
        yield
    finally:
        for i, moe in enumerate(layers):
            if agreement is not None:
                agreement[i] += torch.tensor(moe.replay_agreement, dtype=agreement.dtype)
            moe.replay, moe.replay_agreement, moe.replay_measure_only = None, (0, 0), False


@contextmanager
def recording(model, sink: list):
    """Inside, every forward of the model's MoE layers appends its (tokens, top_k) choice; on exit
    `sink` gains one list per forward-set (one tensor per layer) for R2-style replay."""
    layers = moe_layers(model)
    for moe in layers:
        moe.routing_sink = []
    try:
        yield
    finally:
        if layers:
            sink.append([moe.routing_sink[-1] for moe in layers])
        for moe in layers:
            moe.routing_sink = None
