"""The released checkpoint layout of DeepSeek-V2 weights, from the in-memory one.

transformers 5 holds a DeepSeekMoE layer's routed experts as two fused 3-D tensors,
`mlp.experts.gate_up_proj` (E, 2I, H: gate rows, then up rows) and `mlp.experts.down_proj`
(E, H, I); the released checkpoints (and vLLM's loader) name each expert's matrices
`mlp.experts.{e}.gate_proj.weight` (I, H), `up_proj.weight` (I, H) and `down_proj.weight` (H, I).
`released_layout` yields the second from the first as views (no copy); other tensors pass through.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def released_layout(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base, half = name[: -len("gate_up_proj")], value.shape[1] // 2
            for e in range(value.shape[0]):
                yield f"{base}{e}.gate_proj.weight", value[e, :half]
                yield f"{base}{e}.up_proj.weight", value[e, half:]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(value.shape[0]):
                yield f"{base}{e}.down_proj.weight", value[e]
        else:
            yield name, value
