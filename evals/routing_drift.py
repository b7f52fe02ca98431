"""Routing drift between two DeepSeekMoE checkpoints (`deepalign compare` with the `stats` suite).

Owns `routing_agreement`: both models read the same token rows (B's sampled responses to the chat
prompts, the rows the KL uses) and, per MoE layer, we count the response-predicting positions whose
top-k expert *set* is the same in A and B. 1.0 = RL left the routing where SFT had it; the curve
over layers shows where training moved it. A checkpoint without MoE layers, or two with different
MoE layer counts, has no figure (None). `plot` draws one line per pair.
"""

from __future__ import annotations

import torch


def routed_experts(model, rows: torch.Tensor, attention: torch.Tensor) -> list[torch.Tensor]:
    """Per MoE layer, the (N, T, top_k) experts each position of one forward goes to, sorted."""
    layers = list(model.moe_layers()) if hasattr(model, "moe_layers") else []
    for moe in layers:
        moe.routing_sink = []
    try:
        with torch.no_grad():
            model(input_ids=rows, attention_mask=attention)
        return [moe.routing_sink[-1].view(*rows.shape, -1).sort(dim=-1).values for moe in layers]
    finally:
        for moe in layers:
            moe.routing_sink = None


def agreement_per_layer(a: list[torch.Tensor], b: list[torch.Tensor], mask: torch.Tensor) -> list[float]:
    """Per layer, the share of positions with mask True whose expert sets in a and b are equal."""
    count = mask.sum().clamp_min(1)
    return [float(((x == y).all(-1) & mask).sum() / count) for x, y in zip(a, b, strict=True)]


def routing_agreement(model_a, model_b, rows: torch.Tensor, attention: torch.Tensor,
                      predicting: torch.Tensor) -> list[float] | None:
    """predicting (N, T): True at the positions whose output predicts a response token."""
    a, b = routed_experts(model_a, rows, attention), routed_experts(model_b, rows, attention)
    if not a or len(a) != len(b) or a[0].shape != b[0].shape:
        return None
    return agreement_per_layer(a, b, predicting)


def plot(drift: dict[str, list[float]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for pair, values in drift.items():
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=pair)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("same top-k expert set")
    ax.set_ylim(0, 1.02)
    ax.set_title("Routing drift: tokens routed as the first checkpoint routes them")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
